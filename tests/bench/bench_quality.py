"""Quality of the offline task functions on a labelled set of our own (tests/data/support_messages.csv).

    python tests/bench/bench_quality.py [--rows N]

Prints, for sentiment and for topic, the accuracy of two strategies on the built-in offline models:
the small chat model (SmolLM2-135M-Instruct, in-process, grammar-constrained) and zero-shot classification
by embeddings (all-MiniLM-L6-v2: the label nearest the text), through ai_analyze_sentiment and ai_classify
with endpoint => 'smollm2' or 'minilm'; and the share of answers that are valid labels (target: 100%).
With no default chat endpoint set, one-label tasks use the embedding strategy: it measured far better.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

DATA = Path(__file__).resolve().parents[1] / "data" / "support_messages.csv"
TOPICS = "['billing', 'shipping', 'product', 'account']"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=None, help="score the first N messages only")
    args = parser.parse_args()
    os.environ["AIFUNCS_HOME"] = tempfile.mkdtemp(prefix="aifuncs-quality-")

    import aifuncs

    con = aifuncs.connect()
    limit = f"WHERE id < {args.rows}" if args.rows else ""
    con.execute(f"CREATE TABLE messages AS SELECT * FROM read_csv('{DATA}') {limit}")
    (count,) = con.execute("SELECT count(*) FROM messages").fetchall()[0]
    strategies = [
        ("sentiment", "chat (SmolLM2)", "ai_analyze_sentiment(text, endpoint => 'smollm2')",
         "('positive','negative','neutral','mixed')"),
        ("sentiment", "embeddings (MiniLM)", "ai_analyze_sentiment(text, endpoint => 'minilm')",
         "('positive','negative','neutral','mixed')"),
        ("topic", "chat (SmolLM2)", f"ai_classify(text, {TOPICS}, endpoint => 'smollm2')",
         "('billing','shipping','product','account')"),
        ("topic", "embeddings (MiniLM)", f"ai_classify(text, {TOPICS}, endpoint => 'minilm')",
         "('billing','shipping','product','account')"),
    ]  # fmt: skip
    print(f"messages: {count}  (tests/data/support_messages.csv)")
    print(f"{'task':10s} {'strategy':22s} {'accuracy':>9s} {'valid labels':>13s} {'seconds':>8s}")
    for task, strategy, call, labels in strategies:
        start = time.perf_counter()
        relation = aifuncs.sql(
            con,
            f"SELECT avg(CASE WHEN answer = {task} THEN 1 ELSE 0 END), avg(CASE WHEN answer IN {labels}"
            f" THEN 1 ELSE 0 END) FROM (SELECT {task}, {call} AS answer FROM messages)",
        )
        assert relation is not None
        accuracy, valid = relation.fetchall()[0]
        elapsed = time.perf_counter() - start
        print(f"{task:10s} {strategy:22s} {accuracy:9.1%} {valid:13.1%} {elapsed:8.1f}")


if __name__ == "__main__":
    main()
