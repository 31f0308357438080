"""Usage tracking: who asked, from where, with which labels; each principal reads what it may."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest

import aifuncs
import aifuncs.governance as gov
from aifuncs.errors import ArgumentError
from aifuncs.jobs import run as run_job

COLUMNS = (
    "SELECT requester, origin, client_request_id, usage_context['team'], status_code, input_character_count,"
    " output_character_count, served_entity_id, endpoint_name FROM aifuncs_endpoint_usage ORDER BY request_time"
)


@pytest.fixture
def tokens(home: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    monkeypatch.delenv("AIFUNCS_TOKEN", raising=False)
    for name in ("alice", "bob"):
        gov.create_user(name)
    aifuncs.endpoints.create(
        "shout", kind="python", function="sample_models:shouted", input_format="arrow", returns="VARCHAR"
    )
    aifuncs.endpoints.update_permissions(
        "shout", [{"user_name": n, "permission_level": "CAN_QUERY"} for n in ("alice", "bob")]
    )
    yield {name: gov.create_token(name) for name in ("alice", "bob")}


def test_each_request_says_who_asked_from_where(
    tokens: dict[str, str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    alice = aifuncs.connect(token=tokens["alice"])
    query = "SELECT ai_query('shout', body) FROM (VALUES ('hello'), ('world!')) t(body)"
    aifuncs.sql(alice, query, usage_context={"team": "growth"}, client_request_id="req-1").fetchall()
    with pytest.raises(ArgumentError, match="usage_context maps texts to texts"):
        aifuncs.sql(alice, query, usage_context={"team": 7})  # type: ignore[dict-item]
    bob = aifuncs.connect(token=tokens["bob"])
    aifuncs.sql(bob, "SELECT ai_query('shout', 'hi')").fetchall()
    monkeypatch.setenv("AIFUNCS_TOKEN", tokens["alice"])
    assert aifuncs.pandas.query("shout", pd.Series(["abc"])).tolist() == ["ABC"]
    job = tmp_path / "nightly.sql"
    job.write_text("SELECT ai_query('shout', 'from a job') AS r")
    assert run_job(job).exit_code == 0
    monkeypatch.delenv("AIFUNCS_TOKEN")

    seen_by_alice = alice.sql(COLUMNS).fetchall()
    assert seen_by_alice == [
        ("alice", "sql", "req-1", "growth", 200, 11, 11, "shout", "shout"),
        ("alice", "pandas", None, None, 200, 3, 3, "shout", "shout"),
        ("alice", "job", None, None, 200, 10, 10, "shout", "shout"),
    ]
    assert alice.sql(
        "SELECT usage_context['job'] FROM aifuncs_endpoint_usage WHERE origin = 'job'"
    ).fetchall() == [("nightly",)]
    assert [r[0] for r in bob.sql(COLUMNS).fetchall()] == ["bob"]  # his own only
    owner = aifuncs.connect()  # the home's owner, an admin: everything
    assert sorted(r[0] for r in owner.sql(COLUMNS).fetchall()) == ["alice", "alice", "alice", "bob"]


def test_an_endpoints_manager_reads_its_usage(tokens: dict[str, str]) -> None:
    aifuncs.endpoints.update_permissions("shout", [{"user_name": "bob", "permission_level": "CAN_MANAGE"}])
    aifuncs.sql(aifuncs.connect(token=tokens["alice"]), "SELECT ai_query('shout', 'x')").fetchall()
    bob = aifuncs.connect(token=tokens["bob"])
    assert bob.sql("SELECT requester FROM aifuncs_usage").fetchall() == [("alice",)]
