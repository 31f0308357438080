"""Benchmark: the pandas accessor against the loop a pandas user writes today, and against the SQL path.

    python tests/bench/bench_pandas.py [--rows N] [--loop-rows N]

One OpenAI-compatible chat server on 127.0.0.1 answers every request after a fixed delay (a fast hosted
model). Measured side by side in one run, on the same endpoint and the same texts (all distinct, answers
not kept, so neither side is helped by de-duplication or the cache):
  - loop:     df["body"].apply(one `openai` client call per row), the usual hand-written code;
  - accessor: df["body"].ai.query("chat");
  - SQL:      aifuncs.sql(con, "SELECT ai_query('chat', body) FROM tickets") over the same DataFrame.
Targets: accessor >= 10x the loop; accessor within 10% of the SQL path. Accessor and SQL run alternately,
twice each, best of two.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: the fake server

DELAY_S = 0.02


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--loop-rows", type=int, default=300, help="the loop is slow: timed on fewer rows")
    args = parser.parse_args()
    os.environ["AIFUNCS_HOME"] = tempfile.mkdtemp(prefix="aifuncs-bench-")

    import openai
    import pandas as pd
    from servers import FakeServer

    import aifuncs

    frame = pd.DataFrame({"body": [f"ticket {i}: the app crashes when I pay" for i in range(args.rows)]})
    print(
        f"server delay: {DELAY_S * 1000:.0f} ms per request; {args.rows:,} rows ({args.loop_rows:,} for the loop)"
    )
    with FakeServer(delay_s=DELAY_S) as server:
        aifuncs.endpoints.create("chat", kind="openai", base_url=server.url + "/v1", model="m", cache=False)
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)

        def ask(text: str) -> str:
            reply = client.chat.completions.create(model="m", messages=[{"role": "user", "content": text}])
            return reply.choices[0].message.content or ""

        sample = frame.body.head(args.loop_rows)
        start = time.perf_counter()
        looped = sample.apply(ask)
        loop_rate = len(sample) / (time.perf_counter() - start)

        con = aifuncs.connect()
        con.register("tickets", frame)
        frame.body.head(10).ai.query("chat")  # warm-up: the process's one-time costs (dialects, connections)

        def accessor() -> pd.Series:
            return frame.body.ai.query("chat")

        def through_sql() -> pd.Series:
            relation = aifuncs.sql(con, "SELECT ai_query('chat', body) AS r FROM tickets")
            assert relation is not None
            return relation.df()["r"]

        rates: dict[str, float] = {"accessor": 0.0, "sql": 0.0}
        results = {}
        for _ in range(2):
            for name, run in (("accessor", accessor), ("sql", through_sql)):
                start = time.perf_counter()
                results[name] = run()
                rates[name] = max(rates[name], args.rows / (time.perf_counter() - start))

    assert looped.tolist() == results["accessor"].head(args.loop_rows).tolist(), (
        "the loop and the accessor differ"
    )
    assert results["accessor"].tolist() == results["sql"].tolist(), "the accessor and SQL differ"
    print(f"loop (openai client per row): {loop_rate:10,.0f} rows/s")
    print(f"accessor (s.ai.query):        {rates['accessor']:10,.0f} rows/s")
    print(f"SQL (aifuncs.sql):            {rates['sql']:10,.0f} rows/s")
    print(f"accessor / loop: {rates['accessor'] / loop_rate:6.1f}x  (target >= 10x)")
    print(f"accessor / SQL:  {rates['accessor'] / rates['sql']:6.2f}x  (target >= 0.90x)")


if __name__ == "__main__":
    main()
