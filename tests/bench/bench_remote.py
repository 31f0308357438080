"""Benchmark: ai_query against a loopback server with a fixed 50 ms delay, 32 rows per request.

    python tests/bench/bench_remote.py [--rows N] [--in-flight N]

Prints rows/s of ai_query over 20,000 rows at 32 requests in flight, the ideal for that server
(in flight x rows per request / delay), and a one-request-per-row sequential client (what single-row
LLM extensions do) measured on the same server. Target: at least 80% of the ideal.
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
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--in-flight", type=int, default=32)
    args = parser.parse_args()
    os.environ["AIFUNCS_HOME"] = tempfile.mkdtemp(prefix="aifuncs-bench-")

    import httpx
    from servers import FakeServer

    import aifuncs

    con = aifuncs.connect()
    con.execute(f"CREATE TABLE items AS SELECT i AS id FROM range({args.rows}) t(i)")
    with FakeServer(delay_s=DELAY_S) as server:
        aifuncs.endpoints.create(
            "loopback",
            kind="serving",
            url=server.url + "/invocations",
            returns="BIGINT",
            max_batch_rows=ROWS_PER_REQUEST,
            max_concurrency=args.in_flight,
        )
        start = time.perf_counter()
        rows = aifuncs.sql(con, "SELECT id, ai_query('loopback', id) AS y FROM items").fetchall()
        elapsed = time.perf_counter() - start
        assert len(rows) == args.rows and all(y == 2 * i for i, y in rows), "wrong answers"
        in_flight = server.stats.max_in_flight

        sample = 100  # the sequential client is slow: measure its rate on a sample
        with httpx.Client() as client:
            seq_start = time.perf_counter()
            for i in range(sample):
                client.post(server.url + "/invocations", json={"inputs": [i]}).raise_for_status()
            sequential = sample / (time.perf_counter() - seq_start)

    rate = args.rows / elapsed
    ideal = args.in_flight * ROWS_PER_REQUEST / DELAY_S
    print(
        f"rows: {args.rows:,}  delay: {DELAY_S * 1000:.0f} ms  rows/request: {ROWS_PER_REQUEST}  in flight: {args.in_flight}"
    )
    print(
        f"ai_query:              {rate:10,.0f} rows/s  ({elapsed:.2f} s, server saw at most {in_flight} in flight)"
    )
    print(f"ideal:                 {ideal:10,.0f} rows/s")
    print(f"sequential, 1 row/req: {sequential:10,.0f} rows/s")
    print(f"ratio to ideal:        {rate / ideal:10.2f}x  (target >= 0.80x)")
    print(f"ratio to sequential:   {rate / sequential:10.1f}x")


if __name__ == "__main__":
    main()
