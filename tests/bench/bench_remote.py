"""Benchmark: ai_query against a loopback server with a fixed 50 ms delay, 32 rows per request.

    python tests/bench/bench_remote.py [--rows N ...] [--in-flight N]

Prints rows/s of ai_query over 20,000 and 100,000 rows at 32 requests in flight, the ideal for that
server (in flight x rows per request / delay), and a one-request-per-row sequential client (what
single-row LLM extensions do) measured on the same server. Target: at least 80% of the ideal. Each
query goes to a new endpoint: it pays for planning and for opening its connections (the process's
one-time costs, such as loading sqlglot's dialects, are paid by a 10-row warm-up query first).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: the fake server

DELAY_S = 0.05
ROWS_PER_REQUEST = 32


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, nargs="+", default=[20_000, 100_000])
    parser.add_argument("--in-flight", type=int, default=32)
    args = parser.parse_args()
    os.environ["AIFUNCS_HOME"] = tempfile.mkdtemp(prefix="aifuncs-bench-")

    import httpx
    from servers import FakeServer

    import aifuncs

    con = aifuncs.connect()
    ideal = args.in_flight * ROWS_PER_REQUEST / DELAY_S
    print(f"delay: {DELAY_S * 1000:.0f} ms  rows/request: {ROWS_PER_REQUEST}  in flight: {args.in_flight}")
    print(f"ideal:                       {ideal:10,.0f} rows/s")
    with FakeServer(delay_s=DELAY_S) as server:
        rates = []
        for number, rows in enumerate([10, *args.rows]):
            name = f"loopback-{number}"  # a new endpoint: new connections, as a first query has
            aifuncs.endpoints.create(
                name,
                kind="serving",
                url=server.url + "/invocations",
                returns="BIGINT",
                max_batch_rows=ROWS_PER_REQUEST,
                max_concurrency=args.in_flight,
            )
            con.execute(f"CREATE OR REPLACE TABLE items AS SELECT i AS id FROM range({rows}) t(i)")
            query = f"SELECT id, ai_query('{name}', id) AS y FROM items"
            start = time.perf_counter()
            answers = aifuncs.sql(con, query).fetchall()
            elapsed = time.perf_counter() - start
            assert len(answers) == rows and all(y == 2 * i for i, y in answers), "wrong answers"
            if number == 0:
                continue  # the warm-up
            rates.append(rows / elapsed)
            print(
                f"ai_query, {rows:>7,} rows:     {rows / elapsed:10,.0f} rows/s  ({elapsed:.2f} s,"
                f" {rows / elapsed / ideal:.2f}x ideal, server saw at most {server.stats.max_in_flight} in flight)"
            )

        sample = 100  # the sequential client is slow: measure its rate on a sample
        with httpx.Client() as client:
            seq_start = time.perf_counter()
            for i in range(sample):
                client.post(server.url + "/invocations", json={"inputs": [i]}).raise_for_status()
            sequential = sample / (time.perf_counter() - seq_start)

    print(f"sequential, 1 row/request:   {sequential:10,.0f} rows/s")
    print(f"ratio to ideal:              {min(rates) / ideal:10.2f}x  (the lower; target >= 0.80x)")
    print(f"ratio to sequential:         {min(rates) / sequential:10.1f}x")


if __name__ == "__main__":
    main()
