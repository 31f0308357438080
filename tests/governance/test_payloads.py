"""Inference tables: one row per model request with Databricks' columns, capped payloads, refusals as
metadata, retention, per-principal reading, and what survives `kill -9`."""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import pytest

import aifuncs
import aifuncs.governance as gov
from aifuncs.errors import PermissionDenied
from aifuncs.governance.payloads import FLUSH_EVERY_S

ROWS = (
    "SELECT requester, origin, client_request_id, status_code, request, response, logging_error_codes,"
    " served_entity_id FROM aifuncs_payloads ORDER BY timestamp_ms"
)


@pytest.fixture
def tokens(home: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    monkeypatch.delenv("AIFUNCS_TOKEN", raising=False)
    for name in ("alice", "bob"):
        gov.create_user(name)
    for name in ("shout", "quiet"):
        aifuncs.endpoints.create(
            name, kind="python", function="sample_models:shouted", input_format="arrow", returns="VARCHAR"
        )
    aifuncs.endpoints.update_permissions(
        "shout",
        [
            {"user_name": "alice", "permission_level": "CAN_QUERY"},
            {"user_name": "bob", "permission_level": "CAN_VIEW"},
        ],  # fmt: skip
    )
    aifuncs.endpoints.put_ai_gateway(
        "shout", {"inference_table_config": {"enabled": True, "retention_days": 30}}
    )
    yield {name: gov.create_token(name) for name in ("alice", "bob")}


def test_each_request_is_a_row_and_each_principal_reads_its_own(tokens: dict[str, str]) -> None:
    alice = aifuncs.connect(token=tokens["alice"])
    query = "SELECT ai_query('shout', body) FROM (VALUES ('hello'), ('world!')) t(body)"
    assert len(aifuncs.sql(alice, query, client_request_id="r-1").fetchall()) == 2
    aifuncs.sql(aifuncs.connect(), "SELECT ai_query('quiet', 'not logged')").fetchall()
    bob = aifuncs.connect(token=tokens["bob"])
    with pytest.raises(PermissionDenied):  # bob may view, not query: refused, and recorded without payload
        aifuncs.sql(bob, "SELECT ai_query('shout', 'let me in')")
    (mine,) = alice.sql(ROWS).fetchall()
    requester, origin, client_id, status, request, response, codes, entity = mine
    assert (requester, origin, client_id, status, codes, entity) == (
        "alice",
        "sql",
        "r-1",
        200,
        None,
        "shout",
    )
    assert sorted(json.loads(request)["inputs"]) == ["hello", "world!"]
    assert sorted(json.loads(response)["predictions"]) == ["HELLO", "WORLD!"]
    assert bob.sql(ROWS).fetchall() == [("bob", None, None, 403, None, None, None, "shout")]
    owner = aifuncs.connect()
    assert [r[0] for r in owner.sql(ROWS).fetchall()] == ["alice", "bob"]  # 'quiet' logs nothing


def test_big_payloads_are_replaced_by_an_error_code(tokens: dict[str, str]) -> None:
    aifuncs.endpoints.put_ai_gateway(
        "shout", {"inference_table_config": {"enabled": True, "max_payload_bytes": 200}}
    )
    con = aifuncs.connect()
    answer = aifuncs.sql(con, "SELECT ai_query('shout', repeat('a', 500)) AS r").fetchall()
    assert answer == [("A" * 500,)]  # the caller's answer is whole: only the log leaves it out
    (row,) = con.sql(ROWS).fetchall()
    assert row[4] is None and row[5] is None
    assert json.loads(row[6]) == ["MAX_REQUEST_SIZE_EXCEEDED", "MAX_RESPONSE_SIZE_EXCEEDED"]


def test_rate_limit_refusals_are_recorded(tokens: dict[str, str]) -> None:
    aifuncs.endpoints.put_ai_gateway(
        "shout", {"rate_limits": [{"calls": 1, "key": "user"}], "inference_table_config": {"enabled": True}}
    )
    alice = aifuncs.connect(token=tokens["alice"])
    one = "SELECT ai_query('shout', 'x', cache => false)"
    aifuncs.sql(alice, one, wait_for_limits=False).fetchall()
    with pytest.raises(duckdb.Error, match="rate limited"):
        aifuncs.sql(alice, one, wait_for_limits=False).fetchall()
    assert [r[3] for r in alice.sql(ROWS).fetchall()] == [200, 429]


def test_rows_past_their_retention_are_deleted(tokens: dict[str, str], home: Path) -> None:
    con = aifuncs.connect()
    aifuncs.sql(con, "SELECT ai_query('shout', 'today')").fetchall()
    assert con.sql("SELECT count(*) FROM aifuncs_payloads").fetchall() == [(1,)]  # written now
    old = int((time.time() - 40 * 86400) * 1000)
    with sqlite3.connect(home / "payloads.db") as db:
        db.execute(
            "INSERT INTO payloads (request_id, date, timestamp_ms, status_code, served_entity_id, endpoint)"
            " VALUES ('old', '2000-01-01', ?, 200, 'shout', 'shout')",
            (old,),
        )
    from aifuncs.governance import payloads

    payloads.payload_log()._pruned.clear()  # a new process: it prunes on its first write
    aifuncs.sql(con, "SELECT ai_query('shout', 'again')").fetchall()
    ids = [r[0] for r in con.sql("SELECT request_id FROM aifuncs_payloads").fetchall()]
    assert len(ids) == 2 and "old" not in ids


CHILD = """
import sys, time
import aifuncs
con = aifuncs.connect()
con.execute("SET enable_progress_bar = false")  # DuckDB's bar shares stdout with the times below
for i in range(int(sys.argv[1])):
    aifuncs.sql(con, f"SELECT ai_query('shout', 'request {i}', cache => false)").fetchall()
    print(f"answered at {time.time()!r}", flush=True)
    time.sleep(0.05)  # a request every ~50 ms: the writer's interval passes several times
time.sleep(60)
"""


@pytest.mark.parametrize("sync", [False, True])
def test_what_survives_kill_9(tokens: dict[str, str], home: Path, sync: bool) -> None:
    aifuncs.endpoints.put_ai_gateway("shout", {"inference_table_config": {"enabled": True, "sync": sync}})
    answered = 40
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    env.pop("AIFUNCS_TOKEN", None)
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(answered)], stdout=subprocess.PIPE, text=True, env=env
    )
    assert child.stdout is not None
    times = [_next_time(child.stdout) for _ in range(answered)]
    os.kill(child.pid, signal.SIGKILL)
    killed_at = time.time()
    child.wait(timeout=10)
    child.stdout.close()
    with sqlite3.connect(home / "payloads.db") as db:
        (logged,) = db.execute("SELECT count(*) FROM payloads").fetchone()
    assert logged > 0
    if sync:
        assert logged == answered
    else:  # at most the rows of the last flush interval are lost
        recent = sum(1 for t in times if t > killed_at - FLUSH_EVERY_S - 0.05)
        assert answered - recent <= logged <= answered, (logged, recent)


def _next_time(stream: Any) -> float:
    """The child's next answered-at time (whatever else a library printed, on its line or around it)."""
    while line := stream.readline():
        if found := re.search(r"answered at (\d+(?:\.\d+)?)", line):
            return float(found[1])
    raise AssertionError("the child stopped before answering all its requests")
