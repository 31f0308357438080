"""Governance changes hold on connections that are already open: a guardrail, an inference table or a rate
limit set by another process applies to the very next query of an open DuckDB connection (the function it
registered before is not reused), and to the server's next requests within a second. One revision, counted by
the catalog on every governance change, is part of every kept binding's key."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import duckdb
import pytest

import aifuncs
import aifuncs.governance as gov
from aifuncs.catalog import default_catalog
from aifuncs.engines.duckdb import typed_error
from aifuncs.errors import RateLimited
from security.conftest import Secured

# a streamed call site: DuckDB calls the function the planner registered for it, row batch by row batch
STREAMED = "SELECT id, CASE WHEN id > 0 THEN ai_query('shout', body, failOnError => false) END AS r FROM notes ORDER BY id"


def _elsewhere(code: str, home: Path) -> None:
    """Run `code` in another Python process on the same home (as its owner)."""
    env = {k: v for k, v in os.environ.items() if k != "AIFUNCS_TOKEN"}
    subprocess.run(
        [sys.executable, "-c", "import aifuncs\n" + code], env={**env, "AIFUNCS_HOME": str(home)}, check=True
    )


@pytest.fixture
def con(home: Path) -> duckdb.DuckDBPyConnection:
    aifuncs.endpoints.create(
        "shout", kind="python", function="sample_models:shouted", input_format="arrow", returns="VARCHAR"
    )
    connection = aifuncs.connect()
    connection.execute(
        "CREATE TABLE notes AS SELECT * FROM (VALUES (1, 'hello'), (2, 'the Project Falcon plan')) t(id, body)"
    )
    return connection


def test_a_guardrail_set_by_another_process_holds_on_an_open_connection(
    con: duckdb.DuckDBPyConnection, home: Path
) -> None:
    before = aifuncs.sql(con, STREAMED).fetchall()
    assert before[1][1] == {"result": "THE PROJECT FALCON PLAN", "errorMessage": None}
    _elsewhere(
        "aifuncs.endpoints.put_ai_gateway('shout', {'guardrails': {'input': {'invalid_keywords': ['project falcon']}}})",
        home,
    )
    after = aifuncs.sql(con, STREAMED).fetchall()  # at once: the call site is bound afresh
    assert after == [
        (1, {"result": "HELLO", "errorMessage": None}),
        (
            2,
            {
                "result": None,
                "errorMessage": "blocked by the input guardrail: invalid keyword 'project falcon'",
            },
        ),
    ]
    _elsewhere("aifuncs.endpoints.put_ai_gateway('shout', {})", home)  # and taken off again
    assert aifuncs.sql(con, STREAMED).fetchall() == before


def test_an_inference_table_and_a_rate_limit_hold_on_an_open_connection(
    con: duckdb.DuckDBPyConnection, home: Path
) -> None:
    aifuncs.sql(con, STREAMED).fetchall()
    _elsewhere(
        "aifuncs.endpoints.put_ai_gateway('shout', {'inference_table_config': {'enabled': True}})", home
    )
    aifuncs.sql(con, STREAMED).fetchall()
    logged = [json.loads(r[0]) for r in con.sql("SELECT request FROM aifuncs_payloads").fetchall()]
    assert logged and "hello" in json.dumps(logged)  # the open connection's next query was logged
    _elsewhere("aifuncs.endpoints.set_rate_limits('shout', [{'calls': 1, 'key': 'endpoint'}])", home)
    aifuncs.sql(con, STREAMED, wait_for_limits=False).fetchall()  # the minute's one call
    with pytest.raises(duckdb.Error) as refused:
        aifuncs.sql(con, STREAMED, wait_for_limits=False).fetchall()
    assert isinstance(typed_error(refused.value), RateLimited)


def _holds_within(seconds: float, check: Callable[[], bool]) -> float:
    """How long until `check()` is true, failing after `seconds` (polled: a change is read once a second)."""
    started = time.monotonic()
    while not check():
        assert time.monotonic() - started < seconds, f"not within {seconds} s"
        time.sleep(0.05)
    return time.monotonic() - started


def test_the_revision_counts_every_governance_change(home: Path) -> None:
    aifuncs.endpoints.create("doubler", kind="python", function="sample_models:doubled", returns="DOUBLE")
    gov.create_user("carol")
    catalog = default_catalog()
    changes: list[Callable[[], object]] = [
        lambda: aifuncs.endpoints.put_ai_gateway(
            "doubler", {"guardrails": {"input": {"pii": {"behavior": "MASK"}}}}
        ),
        lambda: aifuncs.endpoints.set_rate_limits("doubler", [{"calls": 5}]),
        lambda: aifuncs.endpoints.update_permissions(
            "doubler", [{"user_name": "carol", "permission_level": "CAN_QUERY"}]
        ),
        lambda: aifuncs.endpoints.set_permissions("doubler", []),
        lambda: aifuncs.endpoints.update("doubler", description="twice"),
        lambda: aifuncs.endpoints.set_default("chat", "doubler"),
        lambda: aifuncs.endpoints.delete("doubler"),
    ]
    seen = [catalog.revision()]
    for change in changes:
        change()
        seen.append(catalog.revision())  # this process sees its own change at once
    assert all(b > a for a, b in zip(seen, seen[1:], strict=False)), seen
    # another process's change: seen here within a second
    _elsewhere(
        "aifuncs.endpoints.create('again', kind='openai', model='m', base_url='http://127.0.0.1:9/v1')", home
    )
    assert _holds_within(3, lambda: catalog.revision() > seen[-1]) < 3  # read again after a second


def test_the_server_honours_a_new_guardrail_within_a_second(secured: Secured) -> None:
    ask = {"messages": [{"role": "user", "content": "about Project Falcon"}]}
    path = "/serving-endpoints/llm/invocations"
    assert secured.call("alice", "POST", path, json=ask).is_success  # the binding is now kept
    aifuncs.endpoints.put_ai_gateway(
        "llm", {"guardrails": {"input": {"invalid_keywords": ["project falcon"]}}}
    )
    took = _holds_within(3, lambda: secured.call("alice", "POST", path, json=ask).status_code == 400)
    assert took < 3  # a second at most, plus what a loaded machine adds to the requests polling it
    refused = secured.call("alice", "POST", path, json=ask).json()["message"]
    assert "invalid keyword 'project falcon'" in refused


def test_principal_and_membership_changes_count_as_governance_changes(home: Path) -> None:
    gov.create_user("carol")
    gov.create_group("analysts")
    catalog = default_catalog()
    for change in (
        lambda: gov.add_member("analysts", "carol"),  # carol gains what the group was granted
        lambda: gov.remove_member("analysts", "carol"),
        lambda: gov.delete_principal("carol"),
    ):
        before = catalog.revision()
        change()
        assert _holds_within(3, lambda before=before: catalog.revision() > before) < 3
