"""Kept answers on the host or on the shared database: a lookup of 1 and of 1,000 keys in a 100,000-answer store,
the host's SQLite file (the answer store itself) against one round trip to a throwaway local PostgreSQL holding
the same keys and answers. Why each host keeps its own store: docs/deployment.md."""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa

sys.path.insert(0, str(Path(__file__).parents[1]))

from pg import cluster  # noqa: E402

from aifuncs.runtime._store import AnswerStore  # noqa: E402

ANSWERS = 100_000


def median_ms(work: Callable[[], object], reps: int = 30) -> float:
    times = []
    for _ in range(reps):
        started = time.perf_counter()
        work()
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000


def main() -> None:
    import psycopg

    keys = [hashlib.sha256(str(i).encode()).digest() for i in range(ANSWERS)]
    values = pa.array([f"answer {i}" for i in range(ANSWERS)])
    home = Path(tempfile.mkdtemp(prefix="aifuncs-bench-answers-"))
    os.environ["AIFUNCS_HOME"] = str(home)
    store = AnswerStore(home / "answers.db")

    async def fill() -> None:
        for start in range(0, ANSWERS, 5000):
            await store.put("e", keys[start : start + 5000], values.slice(start, 5000))

    asyncio.run(fill())
    one, thousand = random.sample(keys, 1), random.sample(keys, 1000)
    local = (median_ms(lambda: store.lookup(one)), median_ms(lambda: store.lookup(thousand)))
    with cluster() as pg, psycopg.connect(pg.url(), autocommit=True) as conn:
        conn.execute("CREATE TABLE answers (key BYTEA PRIMARY KEY, answer TEXT)")
        with conn.cursor().copy("COPY answers (key, answer) FROM STDIN") as copy:
            for key, value in zip(keys, values.to_pylist(), strict=True):
                copy.write_row((key, value))
        conn.execute("ANALYZE answers")
        query = "SELECT key, answer FROM answers WHERE key = ANY(%s)"
        shared = (
            median_ms(lambda: conn.execute(query, (one,)).fetchall()),
            median_ms(lambda: conn.execute(query, (thousand,)).fetchall()),
        )
    print(f"{ANSWERS:,} kept answers; median of 30 lookups")
    print(f"{'keys':>6} {'host file':>12} {'PostgreSQL':>12} {'ratio':>7}")
    for label, mine, theirs in (("1", local[0], shared[0]), ("1,000", local[1], shared[1])):
        print(f"{label:>6} {mine:>9.3f} ms {theirs:>9.3f} ms {theirs / mine:>6.1f}x")


if __name__ == "__main__":
    main()
