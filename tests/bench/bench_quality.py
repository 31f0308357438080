"""Quality of the offline task functions on labelled support messages of our own.

    python tests/bench/bench_quality.py [--chat]

Two sets: tests/data/support_messages.csv (253 messages from templates, tests/data/make_support_messages.py)
and tests/data/support_messages_written.csv (84 messages written one by one: 4 topics x 3 sentiments). The
label phrasings and sentiment examples in udfs/ were chosen looking at the templated set and the written
set's first two thirds only; its last third (id % 3 = 0, 28 messages) is held out, and the targets are read
there: 80% for sentiment, 90% for topic. Every answer must be a valid label (100%).

The offline default for one-label tasks is zero-shot classification by embeddings (all-MiniLM-L6-v2; for
sentiment with the VADER lexicon beside it). `--chat` adds the small chat model (SmolLM2-135M-Instruct,
grammar-constrained) for comparison: it takes a few minutes.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

DATA = Path(__file__).resolve().parents[1] / "data"
TOPICS = "['billing', 'shipping', 'product', 'account']"
SENTIMENTS = "('positive','negative','neutral','mixed')"
SETS = [
    ("templated", "support_messages.csv", "true"),
    ("written, tuned on", "support_messages_written.csv", "id % 3 <> 0"),
    ("written, held out", "support_messages_written.csv", "id % 3 = 0"),
]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--chat", action="store_true", help="also the small chat model (slow)")
    args = parser.parse_args()
    os.environ["AIFUNCS_HOME"] = tempfile.mkdtemp(prefix="aifuncs-quality-")

    import aifuncs

    con = aifuncs.connect()
    strategies = [("embeddings (MiniLM)", "minilm")] + ([("chat (SmolLM2)", "smollm2")] if args.chat else [])
    print(
        f"{'set':18s} {'rows':>4s} {'task':9s} {'strategy':20s} {'accuracy':>9s} {'valid':>7s} {'seconds':>8s}"
    )
    for set_name, file, where in SETS:
        con.execute(
            f"CREATE OR REPLACE TABLE messages AS SELECT * FROM read_csv('{DATA / file}') WHERE {where}"
        )
        (rows,) = con.execute("SELECT count(*) FROM messages").fetchall()[0]
        for strategy, endpoint in strategies:
            for task, call, labels in (
                ("sentiment", f"ai_analyze_sentiment(text, endpoint => '{endpoint}')", SENTIMENTS),
                ("topic", f"ai_classify(text, {TOPICS}, endpoint => '{endpoint}')", TOPICS.replace("[", "(").replace("]", ")")),
            ):  # fmt: skip
                start = time.perf_counter()
                relation = aifuncs.sql(
                    con,
                    f"SELECT avg(CASE WHEN answer = {task} THEN 1 ELSE 0 END), avg(CASE WHEN answer IN {labels}"
                    f" THEN 1 ELSE 0 END) FROM (SELECT {task}, {call} AS answer FROM messages)",
                )
                assert relation is not None
                accuracy, valid = relation.fetchall()[0]
                seconds = time.perf_counter() - start
                print(
                    f"{set_name:18s} {rows:4d} {task:9s} {strategy:20s} {accuracy:9.1%} {valid:7.1%} {seconds:8.1f}"
                )
    print("targets (written, held out): sentiment >= 80%, topic >= 90%, valid labels 100%")


if __name__ == "__main__":
    main()
