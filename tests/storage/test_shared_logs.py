"""Usage, its rollups and the inference tables through the storage seam: the same tests on SQLite files and on
PostgreSQL. On the database every host's rows are one view, each row is written once by its request id (a
batch sent again, a dead process's journal replayed), and payloads arrive sealed, the key never with them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from pg import stored_database

import aifuncs
from aifuncs.governance.keys import generate_key
from aifuncs.runtime._rollups import Rollups, Scope
from aifuncs.runtime._usage import UsageLog, UsageRow, _insert_shared
from aifuncs.storage import postgres

CANARY = "okapi-canary-41d9"


def _row(n: int, **fields: object) -> UsageRow:
    base = UsageRow(
        ts=f"2026-03-0{1 + n % 2}T10:00:00.{n:03d}+00:00", endpoint="llm", endpoint_version=1, kind="python",
        function="ai_query", rows=1, input_tokens=n, output_tokens=1, latency_ms=float(2 ** (n % 4)),
        status="ok", attempts=1, error=None, request_id=f"req-{n}", requester="alice", origin="sql",
    )  # fmt: skip
    return base._replace(**fields)  # type: ignore[arg-type]


def test_usage_and_inference_rows_read_back_through_sql(
    backend: str, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = generate_key()
    monkeypatch.setenv("AIFUNCS_ENCRYPTION_KEY", key)
    monkeypatch.delenv("AIFUNCS_ENCRYPTION_KEY_FILE", raising=False)
    aifuncs.endpoints.create(
        "shout", kind="python", function="sample_models:shouted", input_format="arrow", returns="VARCHAR"
    )
    aifuncs.endpoints.put_ai_gateway("shout", {"inference_table_config": {"enabled": True}})
    con = aifuncs.connect()
    query = f"SELECT ai_query('shout', '{CANARY} ' || i, cache => false) FROM range(3) t(i)"
    assert len(aifuncs.sql(con, query).fetchall()) == 3
    usage = con.sql("SELECT endpoint, status, rows FROM aifuncs_usage").fetchall()
    assert usage == [("shout", "ok", 3)]
    (payload,) = con.sql("SELECT request, response, status_code FROM aifuncs_payloads").fetchall()
    assert sorted(json.loads(payload[1])["predictions"]) == [f"{CANARY.upper()} {i}" for i in range(3)]
    assert payload[2] == 200
    on_database = backend == "postgresql"
    assert (home / "usage.db").exists() is not on_database
    assert (home / "payloads.db").exists() is not on_database
    if on_database:  # sealed before it left the host, and the key stayed there
        stored = stored_database()
        assert CANARY.encode() not in stored and CANARY.upper().encode() not in stored
        assert key.encode() not in stored


KILLED = """
import os, sys
from aifuncs.runtime._usage import UsageLog
from test_shared_logs import _row
log = UsageLog()
for n in range(int(sys.argv[1])):
    log.sending(_row(n, status="interrupted"))
    log.record(_row(n))
log.sending(_row(999, status="interrupted"))  # sent, never answered: paid all the same
os._exit(0)  # as kill -9: no exit handler, nothing flushed on the way out
"""


def test_a_dead_process_rows_are_written_once(backend: str, home: Path) -> None:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1]), str(Path(__file__).parent)]),
    }
    done = subprocess.run(
        [sys.executable, "-c", KILLED, "20"], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    log = UsageLog()
    rows = log.read()
    assert len(rows) == 21, len(rows)
    assert sorted(r["request_id"] for r in rows) == sorted([f"req-{n}" for n in range(20)] + ["req-999"])
    assert [r["status"] for r in rows if r["request_id"] == "req-999"] == ["interrupted"]
    assert all(r["status"] == "ok" for r in rows if r["request_id"] != "req-999")
    assert log.replay() == 0 and len(log.read()) == 21  # replayed once: the journal is gone
    assert log.spent("nothing") == (0, 0)


def test_a_batch_sent_again_is_written_once(pg_url: str) -> None:
    # the connection broke after the commit, before its answer: the writer keeps the rows and sends them again
    database = postgres(pg_url)
    rows = [_row(n) for n in range(50)]
    assert _insert_shared(database, rows, 5.0) == 50
    assert _insert_shared(database, [*rows, _row(50)], 5.0) == 1
    assert database.reader().execute("SELECT count(*), count(DISTINCT request_id) FROM usage").fetchone() == (
        51,
        51,
    )


def test_rollups_fold_each_row_once_on_both_backends(backend: str, home: Path) -> None:
    log = UsageLog()
    for n in range(8):
        log.record(_row(n, requester="alice" if n < 6 else "bob", status_code=500 if n == 7 else 200))
    log.flush()
    rollups = Rollups(home / "usage.db")
    assert rollups.refresh() == 8
    assert rollups.refresh() == 0
    hourly = {(h.hour, h.status_class): (h.requests, h.input_tokens) for h in rollups.hourly("2026-03-01T00")}
    assert hourly == {
        ("2026-03-01T10", "2xx"): (4, 0 + 2 + 4 + 6),
        ("2026-03-02T10", "2xx"): (3, 1 + 3 + 5),
        ("2026-03-02T10", "5xx"): (1, 7),
    }
    latency = rollups.latency("2026-03-01T00", ["llm"])
    assert latency[("2026-03-01T10", "llm")] == {0: 2, 8: 2}  # 1 ms and 4 ms, 4 buckets per doubling
    assert latency[("2026-03-02T10", "llm")] == {4: 2, 12: 2}  # 2 ms and 8 ms
    sums = {s.key: (s.requests, s.errors) for s in rollups.daily_sums("2026-03-01", "requester", Scope(True))}
    assert sums == {"alice": (6, 0), "bob": (2, 1)}
    mine = rollups.daily_sums("2026-03-01", "requester", Scope(requester="bob"))
    assert [(s.key, s.requests) for s in mine] == [("bob", 2)]
    log.record(_row(8, requester="bob"))
    log.flush()
    assert rollups.refresh() == 1  # only the new row
    sums = {s.key: s.requests for s in rollups.daily_sums("2026-03-01", "requester", Scope(True))}
    assert sums == {"alice": 6, "bob": 3}
