"""Page times of the web UI at scale: 1,000,000 usage rows and 200,000 inference rows (30 days, 20 endpoints,
100 users), every page under 300 ms of server time, printed as a table. With `--postgresql` the same rows are
in a throwaway PostgreSQL 15 database (tests/pg.py) named by AIFUNCS_DATABASE_URL: the rollups and the request
log read there.

    .venv/bin/python tests/bench/bench_ui.py [--postgresql]
"""

from __future__ import annotations

import os
import random
import sys
import tempfile
import time
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path

USAGE_ROWS, PAYLOAD_ROWS, ENDPOINTS, USERS, DAYS = 1_000_000, 200_000, 20, 100, 30
BUDGET_MS = 300.0


def main() -> int:
    if "--postgresql" in sys.argv:
        sys.path.insert(0, str(Path(__file__).parents[1]))
        from pg import cluster

        with cluster() as running:
            os.environ["AIFUNCS_DATABASE_URL"] = running.url()
            return run()
    os.environ.pop("AIFUNCS_DATABASE_URL", None)
    return run()


def _copy(table: str, columns: list[str], rows: Iterable[tuple[object, ...]]) -> None:
    """Rows into a table of the shared database by COPY (a million inserts one by one take minutes)."""
    import psycopg

    with psycopg.connect(os.environ["AIFUNCS_DATABASE_URL"]) as conn, conn.cursor() as cursor:
        with cursor.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)
        conn.execute(f"ANALYZE {table}")


def run() -> int:
    home = Path(tempfile.mkdtemp(prefix="bench-ui-")) / "home"
    os.environ["AIFUNCS_HOME"] = str(home)
    os.environ.pop("AIFUNCS_TOKEN", None)
    on_database = "AIFUNCS_DATABASE_URL" in os.environ
    from starlette.testclient import TestClient

    import aifuncs
    from aifuncs.governance.payloads import PayloadRow, connect
    from aifuncs.runtime._rollups import Rollups
    from aifuncs.runtime._usage import _COLUMNS, UsageRow, _connect
    from aifuncs.server import app
    from aifuncs.server.ui import sign_in_link

    names = [f"model-{i:02d}" for i in range(ENDPOINTS)]
    for name in names:
        aifuncs.endpoints.create(name, kind="openai", model=name, base_url="http://127.0.0.1:9/v1",
                                 usd_per_1m_input_tokens=0.5, usd_per_1m_output_tokens=1.5)  # fmt: skip
    rng = random.Random(7)
    now = datetime.now(UTC)
    usage = (
        UsageRow((now - timedelta(seconds=rng.random() * DAYS * 86400)).isoformat(timespec="milliseconds"),
                 rng.choice(names), 1, "openai", "ai_query", 1, rng.randint(5, 500), rng.randint(5, 300),
                 rng.lognormvariate(5, 0.6), "ok" if rng.random() > 0.02 else "error", 1, None,
                 f"r{i}", f"user{rng.randrange(USERS)}", "rest") for i in range(USAGE_ROWS)
    )  # fmt: skip
    payloads = (
        (f"p{i}", None, "2025-01-01", int((now.timestamp() - rng.random() * DAYS * 86400) * 1000),
         200 if rng.random() > 0.03 else 500, rng.lognormvariate(5, 0.6),
         f'{{"messages": [{{"role": "user", "content": "ticket {i}"}}]}}', '{"choices": []}',
         names[i % 2], None, f"user{rng.randrange(USERS)}", names[i % 2], "rest", 10, 20)
        for i in range(PAYLOAD_ROWS)
    )  # fmt: skip
    if on_database:
        _copy("usage", list(UsageRow._fields), usage)
        _copy("payloads", list(PayloadRow._fields), (
            (*row[:6], row[6].encode(), row[7].encode(), *row[8:]) for row in payloads))  # fmt: skip
    else:
        db = _connect(home / "usage.db")
        with db:
            db.executemany(
                f"INSERT INTO usage ({_COLUMNS}) VALUES ({', '.join('?' * len(UsageRow._fields))})", usage
            )
        db.close()
        pay = connect(home / "payloads.db")
        with pay:
            pay.executemany(
                f"INSERT INTO payloads VALUES ({', '.join('?' * len(PayloadRow._fields))})", payloads
            )
        pay.close()
    started = time.perf_counter()
    folded = Rollups(home / "usage.db").refresh()
    print(
        f"first rollup of {folded:,} usage rows: {time.perf_counter() - started:.2f} s (once; then incremental)"
    )

    client = TestClient(app(), base_url="http://testserver", follow_redirects=False)
    client.get(sign_in_link("http://testserver", home).removeprefix("http://testserver"))
    pages = ["/ui/endpoints", "/ui/endpoints/model-00", "/ui/endpoints/model-00/series?range=30d",
             "/ui/endpoints/model-00?tab=usage", "/ui/endpoints/model-00?tab=logs",
             "/ui/endpoints/model-00?tab=logs&status=5xx", "/ui/endpoints/model-00?tab=logs&requester=user7",
             "/ui/endpoints/model-00?tab=logs&q=ticket%20199998", "/ui/usage?by=endpoint&days=30", "/ui/usage?by=entity&days=30",
             "/ui/usage?by=user&days=30", "/ui/usage?by=group&days=30", "/ui/usage?by=day&days=30",
             "/ui/usage?mine=1", "/ui/usage.csv?by=user&days=30", "/ui/jobs", "/ui/tokens"]  # fmt: skip
    worst = 0.0
    print(f"backend: {'PostgreSQL 15' if on_database else 'SQLite files'}")
    print(f"{'page':58} {'status':>6} {'median ms':>10} {'max ms':>8}")
    for path in pages:
        times = []
        for _ in range(5):
            t = time.perf_counter()
            answer = client.get(path)
            times.append((time.perf_counter() - t) * 1000)
        times.sort()
        worst = max(worst, times[2])
        print(f"{path:58} {answer.status_code:>6} {times[2]:>10.1f} {times[-1]:>8.1f}")
    print(f"slowest median: {worst:.1f} ms (budget {BUDGET_MS:.0f} ms)")
    return 0 if worst < BUDGET_MS else 1


if __name__ == "__main__":
    sys.exit(main())
