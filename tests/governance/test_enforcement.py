"""The policy check where it is used: the catalog, SQL (planned and plain), pandas, and the identity bound into
a connection. Real DuckDB, real catalog, an in-process model that counts its calls."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import duckdb
import pandas as pd
import pytest
import sample_models

import aifuncs
import aifuncs.governance as gov
from aifuncs.errors import ConfigError, PermissionDenied, SqlError, UnknownEndpoint
from aifuncs.governance import identity as identity_module


@pytest.fixture
def tokens(home: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    """As the home's owner (an admin): users alice and bob, a group analysts with bob, an endpoint
    'doubler' made by the owner; a token for each user."""
    monkeypatch.delenv("AIFUNCS_TOKEN", raising=False)
    gov.create_user("alice")
    gov.create_user("bob")
    gov.create_group("analysts", members=["bob"])
    aifuncs.endpoints.create("doubler", kind="python", function="sample_models:doubled", returns="DOUBLE")
    gov.grant_entitlement("alice")  # alice may create endpoints of her own
    sample_models.CALLS.clear()
    yield {"alice": gov.create_token("alice"), "bob": gov.create_token("bob")}


def act_as(monkeypatch: pytest.MonkeyPatch, token: str | None) -> None:
    if token is None:
        monkeypatch.delenv("AIFUNCS_TOKEN", raising=False)
    else:
        monkeypatch.setenv("AIFUNCS_TOKEN", token)


def test_the_home_owner_needs_nothing_set_up(con: duckdb.DuckDBPyConnection) -> None:
    me = gov.whoami()
    assert me.admin and me.implicit
    aifuncs.endpoints.create("doubler", kind="python", function="sample_models:doubled", returns="DOUBLE")
    assert aifuncs.sql(con, "SELECT ai_query('doubler', 2.0::DOUBLE) AS r").fetchall() == [(4.0,)]
    assert con.sql("SELECT aifuncs_current_principal()").fetchall() == [(me.name,)]
    # the owner's powers come from owning the home, not from rows: nothing was granted
    assert aifuncs.endpoints.get_permissions("doubler")["access_control_list"] == []


def test_an_endpoint_one_may_not_view_reads_exactly_as_a_missing_one(
    tokens: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    act_as(monkeypatch, tokens["alice"])
    aifuncs.endpoints.create("alices-model", kind="forecast")  # non-admins may not make python endpoints
    acl = aifuncs.endpoints.get_permissions("alices-model")["access_control_list"]
    assert [(e.get("user_name"), e["all_permissions"][0]["permission_level"]) for e in acl] == [
        ("alice", "CAN_MANAGE")
    ]
    act_as(monkeypatch, tokens["bob"])
    assert [e.name for e in aifuncs.endpoints.list()] == []
    with pytest.raises(UnknownEndpoint) as hidden:
        aifuncs.endpoints.get("alices-model")
    with pytest.raises(UnknownEndpoint) as missing:
        aifuncs.endpoints.get("no-such-model")
    assert str(hidden.value).replace("alices-model", "X") == str(missing.value).replace("no-such-model", "X")
    with pytest.raises(UnknownEndpoint) as typo:
        aifuncs.endpoints.get("alices-mode")
    assert "alices-model" not in str(typo.value)  # "did you mean" names only what bob may view
    con = aifuncs.connect()
    assert con.sql("SELECT count(*) FROM aifuncs_endpoints").fetchall() == [(0,)]
    with pytest.raises(UnknownEndpoint) as in_sql:
        aifuncs.sql(con, "SELECT ai_query('alices-model', 1.0::DOUBLE)")
    assert str(in_sql.value) == str(hidden.value)


def test_a_query_without_can_query_fails_before_the_first_model_call(
    tokens: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    aifuncs.endpoints.update_permissions("doubler", [{"user_name": "bob", "permission_level": "CAN_VIEW"}])
    act_as(monkeypatch, tokens["bob"])
    con = aifuncs.connect()
    con.execute("CREATE TABLE big AS SELECT i::DOUBLE AS x FROM range(1000000) t(i)")
    with pytest.raises(
        PermissionDenied, match="'bob' may not query endpoint 'doubler': that needs CAN_QUERY"
    ):
        aifuncs.sql(con, "SELECT ai_query('doubler', x) FROM big")
    with pytest.raises(duckdb.Error, match="needs CAN_QUERY"):
        con.sql("SELECT ai_query('doubler', x) FROM big").fetchall()  # the plain function, no planner
    with pytest.raises(PermissionDenied, match="needs CAN_QUERY"):
        aifuncs.explain(con, "SELECT ai_query('doubler', x) FROM big")
    with pytest.raises(PermissionDenied, match="needs CAN_QUERY"):
        aifuncs.pandas.query("doubler", pd.Series([1.0, 2.0]))
    assert sample_models.CALLS == []
    # a grant to bob's group lets him query; through any of the doors
    act_as(monkeypatch, None)
    aifuncs.endpoints.update_permissions(
        "doubler", [{"group_name": "analysts", "permission_level": "CAN_QUERY"}]
    )
    act_as(monkeypatch, tokens["bob"])
    assert aifuncs.sql(con, "SELECT ai_query('doubler', 2.0::DOUBLE)").fetchall() == [(4.0,)]
    assert con.sql("SELECT ai_query('doubler', 2.0::DOUBLE)").fetchall() == [("4.0",)]
    assert aifuncs.pandas.query("doubler", pd.Series([1.0])).tolist() == [2.0]


def test_changes_need_can_manage_and_leave_the_catalog_unchanged(
    tokens: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    aifuncs.endpoints.update_permissions("doubler", [{"user_name": "bob", "permission_level": "CAN_QUERY"}])
    before = aifuncs.endpoints.versions("doubler")
    acl = aifuncs.endpoints.get_permissions("doubler")
    act_as(monkeypatch, tokens["bob"])
    grant = [{"user_name": "bob", "permission_level": "CAN_MANAGE"}]
    for change in (
        lambda: aifuncs.endpoints.update("doubler", description="mine now"),
        lambda: aifuncs.endpoints.delete("doubler"),
        lambda: aifuncs.endpoints.get_permissions("doubler"),
        lambda: aifuncs.endpoints.set_permissions("doubler", grant),
        lambda: aifuncs.endpoints.update_permissions("doubler", grant),
        lambda: aifuncs.endpoints.set_default("chat", "doubler"),
        lambda: gov.create_user("mallory"),
        lambda: gov.add_member("analysts", "alice"),
        lambda: gov.create_token("alice"),
        lambda: aifuncs.endpoints.set_rate_limits("doubler", []),
        lambda: aifuncs.endpoints.put_ai_gateway("doubler", {"guardrails": {}}),
        lambda: gov.rotate_key(bytes(32)),
    ):
        with pytest.raises(PermissionDenied):
            change()
    act_as(monkeypatch, None)
    assert aifuncs.endpoints.versions("doubler") == before
    assert aifuncs.endpoints.get_permissions("doubler") == acl
    assert gov.directory().members("analysts") == ["bob"]
    assert aifuncs.endpoints.get_ai_gateway("doubler") == {"rate_limits": []}


def test_deleting_an_endpoint_takes_its_grants(
    tokens: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    aifuncs.endpoints.update_permissions("doubler", [{"user_name": "bob", "permission_level": "CAN_QUERY"}])
    aifuncs.endpoints.delete("doubler")
    aifuncs.endpoints.create("doubler", kind="python", function="sample_models:doubled", returns="DOUBLE")
    act_as(monkeypatch, tokens["bob"])
    with pytest.raises(UnknownEndpoint):
        aifuncs.endpoints.get("doubler")


def test_the_principal_is_bound_into_the_connection(home: Path, tokens: dict[str, str]) -> None:
    aifuncs.endpoints.update_permissions("doubler", [{"user_name": "alice", "permission_level": "CAN_QUERY"}])
    path = home.parent / "shared.duckdb"
    con = aifuncs.connect(path, token=tokens["alice"])
    assert con.sql("SELECT aifuncs_current_principal()").fetchall() == [("alice",)]
    for attempt in (
        "CREATE OR REPLACE MACRO aifuncs_current_principal() AS 'root'",
        "CREATE TEMP MACRO main.aifuncs_current_principal() AS 'root'",
        "DROP FUNCTION __aifuncs_ai_query",
        "create or replace function \"aifuncs_current_principal\"() as 'root'",
    ):
        with pytest.raises(SqlError, match="belong to aifuncs' own functions"):
            aifuncs.sql(con, attempt)
    aifuncs.sql(con, "SET VARIABLE principal = 'root'")
    assert aifuncs.sql(con, "SELECT aifuncs_current_principal()").fetchall() == [("alice",)]
    # the same file opened again in this process shares DuckDB's instance: it stays alice's
    with pytest.raises(ConfigError, match="already open in this process as 'alice'"):
        aifuncs.connect(path, token=tokens["bob"])
    cursor = con.cursor()
    assert aifuncs.sql(cursor, "SELECT aifuncs_current_principal()").fetchall() == [("alice",)]
    assert aifuncs.sql(cursor, "SELECT ai_query('doubler', 1.0::DOUBLE)").fetchall() == [(2.0,)]
    con.close()


def test_a_revoked_token_stops_working_in_an_open_connection(
    tokens: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(identity_module, "RECHECK_S", 0.0)
    aifuncs.endpoints.update_permissions("doubler", [{"user_name": "alice", "permission_level": "CAN_QUERY"}])
    con = aifuncs.connect(token=tokens["alice"])
    assert aifuncs.sql(con, "SELECT ai_query('doubler', 1.0::DOUBLE)").fetchall() == [(2.0,)]
    (token,) = [t for t in gov.list_tokens("alice")]
    gov.revoke_token(token.id)
    with pytest.raises(gov.InvalidToken, match="was revoked"):
        aifuncs.sql(con, "SELECT ai_query('doubler', 1.0::DOUBLE)")


def test_bad_tokens_and_grants_are_clear_errors(tokens: dict[str, str]) -> None:
    with pytest.raises(gov.InvalidToken, match="Not an aifuncs token"):
        aifuncs.connect(token="hunter2")
    broken = tokens["bob"][:-1] + ("A" if tokens["bob"][-1] != "A" else "B")
    with pytest.raises(gov.InvalidToken) as checksum:
        aifuncs.connect(token=broken)
    assert broken not in str(checksum.value)
    with pytest.raises(gov.UnknownPrincipal, match="no user, group or service principal 'carol'"):
        aifuncs.endpoints.update_permissions(
            "doubler", [{"user_name": "carol", "permission_level": "CAN_QUERY"}]
        )
    with pytest.raises(ConfigError, match="Unknown permission level"):
        aifuncs.endpoints.set_permissions("doubler", [{"user_name": "bob", "permission_level": "CAN_EAT"}])
    assert aifuncs.endpoints.get_permissions("doubler")["access_control_list"] == []  # nothing half-written


def test_users_manage_their_own_tokens_only(tokens: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    bobs = {t.id for t in gov.list_tokens("bob")}
    act_as(monkeypatch, tokens["alice"])
    gov.create_token(comment="laptop")
    assert {t.principal for t in gov.list_tokens()} == {"alice"}
    with pytest.raises(PermissionDenied):
        gov.list_tokens("bob")
    with pytest.raises(ConfigError, match="no token .* of yours"):
        gov.revoke_token(next(iter(bobs)))
    act_as(monkeypatch, None)
    assert all(t.revoked_at is None for t in gov.list_tokens("bob"))
    owners = gov.create_token()  # the home's owner makes tokens for itself too (a REST client, the UI)
    act_as(monkeypatch, owners)
    assert gov.whoami().admin and gov.whoami().implicit


def test_the_permissions_view_shows_what_each_may_see(
    tokens: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    act_as(monkeypatch, tokens["alice"])
    aifuncs.endpoints.create("alices-model", kind="forecast")  # non-admins may not make python endpoints
    aifuncs.endpoints.update_permissions(
        "alices-model", [{"group_name": "analysts", "permission_level": "CAN_VIEW"}]
    )
    query = "SELECT endpoint, principal, principal_type, permission_level, inherited_from FROM aifuncs_permissions ORDER BY ALL"
    assert aifuncs.connect().sql(query).fetchall() == [
        ("alices-model", "alice", "user", "CAN_MANAGE", ""),
        ("alices-model", "analysts", "group", "CAN_VIEW", ""),
        ("alices-model", "bob", "user", "CAN_VIEW", "groups/analysts"),
    ]
    act_as(monkeypatch, tokens["bob"])  # bob sees his own level only, and nothing of 'doubler'
    assert aifuncs.connect().sql(query).fetchall() == [
        ("alices-model", "bob", "user", "CAN_VIEW", "groups/analysts")
    ]
    act_as(monkeypatch, None)
    assert len(aifuncs.connect().sql(query).fetchall()) == 3


def test_kept_answers_stay_with_the_principal_that_paid(
    tokens: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    aifuncs.endpoints.update_permissions(
        "doubler",
        [
            {"group_name": "analysts", "permission_level": "CAN_QUERY"},
            {"user_name": "alice", "permission_level": "CAN_QUERY"},
        ],  # fmt: skip
    )
    query = "SELECT sum(ai_query('doubler', i::DOUBLE, cache => true)) FROM range(100) t(i)"

    def rows_asked(token: str) -> int:
        sample_models.CALLS.clear()
        con = aifuncs.connect(token=token)
        assert aifuncs.sql(con, query).fetchall() == [(9900.0,)]
        con.close()
        return sum(sample_models.CALLS)

    assert rows_asked(tokens["alice"]) == 100
    assert rows_asked(tokens["alice"]) == 0  # her own answers, kept
    assert rows_asked(tokens["bob"]) == 100  # not alice's: bob pays for his own
    aifuncs.endpoints.update("doubler", share_answers=True)
    assert rows_asked(tokens["alice"]) == 100  # a new version: asked afresh, now for everyone
    assert rows_asked(tokens["bob"]) == 0
    aifuncs.endpoints.set_permissions("doubler", [])  # a kept answer still needs CAN_QUERY
    with pytest.raises(UnknownEndpoint):
        rows_asked(tokens["bob"])


def test_jobs_run_as_their_principal_and_each_reads_its_own_runs(
    tokens: dict[str, str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from aifuncs.jobs import get_run, list_runs
    from aifuncs.jobs import run as run_job

    aifuncs.endpoints.update_permissions("doubler", [{"user_name": "alice", "permission_level": "CAN_QUERY"}])
    job = tmp_path / "score.sql"
    job.write_text("SELECT ai_query('doubler', 21.0::DOUBLE) AS r")
    mine = run_job(job, token=tokens["alice"])
    assert mine.exit_code == 0
    denied = run_job(job, token=tokens["bob"])  # bob may not even see the endpoint
    assert denied.exit_code != 0 and "Unknown endpoint 'doubler'" in (denied.error or "")
    act_as(monkeypatch, tokens["bob"])
    assert [r["principal"] for r in list_runs()] == ["bob"]
    assert get_run(mine.run_id) is None  # alice's run reads as one that does not exist
    assert aifuncs.connect().sql("SELECT principal FROM aifuncs_runs").fetchall() == [("bob",)]
    act_as(monkeypatch, None)
    assert sorted(r["principal"] for r in list_runs()) == ["alice", "bob"]


def test_one_thread_rechecks_a_token_while_others_go_on(
    tokens: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(identity_module, "RECHECK_S", 0.0)
    identity = gov.identify(tokens["alice"])
    gov.revoke_token(gov.list_tokens("alice")[0].id)
    with identity._checking:  # another thread is looking the token up now
        identity.recheck()  # goes on as last checked: no second lookup (and last-use write) at once
    with pytest.raises(gov.InvalidToken, match="was revoked"):
        identity.recheck()
