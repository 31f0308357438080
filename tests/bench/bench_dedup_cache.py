"""Benchmark: de-duplication and the answer cache on 100,000 rows with 1,000 distinct requests.

    python tests/bench/bench_dedup_cache.py [--rows N] [--distinct N]

A loopback server (its own process, 50 ms per request, 32 rows per request, 32 in flight) counts the
rows it is sent. The same query runs three ways in one process: with `cache => false` (no de-duplication,
no cache: every row is sent), then twice as written (first run: each distinct request once; second run:
all answers from the cache). Targets: first run sends exactly --distinct rows, second run 0.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: the fake server


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--distinct", type=int, default=1_000)
    args = parser.parse_args()
    os.environ["AIFUNCS_HOME"] = tempfile.mkdtemp(prefix="aifuncs-bench-")

    from servers import FakeServer

    import aifuncs

    con = aifuncs.connect()
    con.execute(
        f"CREATE TABLE events AS SELECT i AS id, (i * 7919) % {args.distinct} AS code FROM range({args.rows}) t(i)"
    )
    expected = {i: 2 * ((i * 7919) % args.distinct) for i in range(args.rows)}
    with FakeServer(delay_s=0.05) as server:
        aifuncs.endpoints.create(
            "loopback",
            kind="serving",
            url=server.url + "/invocations",
            returns="BIGINT",
            max_batch_rows=32,
            max_concurrency=32,
        )
        aifuncs.sql(con, "SELECT ai_query('loopback', 1, cache => false)").fetchall()  # warm the process

        def run(label: str, cache_argument: str) -> tuple[str, int, float]:
            before = server.stats.rows
            start = time.perf_counter()
            rows = aifuncs.sql(
                con, f"SELECT id, ai_query('loopback', code{cache_argument}) AS y FROM events"
            ).fetchall()
            elapsed = time.perf_counter() - start
            assert len(rows) == args.rows and all(y == expected[i] for i, y in rows), (
                f"{label}: wrong answers"
            )
            return label, server.stats.rows - before, elapsed

        results = [
            run("no dedup, no cache", ", cache => false"),
            run("first run", ""),
            run("second run", ""),
        ]

    print(
        f"rows: {args.rows:,}  distinct: {args.distinct:,}  server: 50 ms/request, 32 rows/request, 32 in flight"
    )
    baseline = results[0][2]
    for label, sent, elapsed in results:
        print(
            f"{label:20s} rows sent {sent:8,}   {elapsed:7.3f} s   {baseline / elapsed:7.1f}x faster than no dedup"
        )
    print(
        f"targets: first run sends {args.distinct:,} rows (sent {results[1][1]:,}), second run 0 (sent {results[2][1]:,})"
    )


if __name__ == "__main__":
    main()
