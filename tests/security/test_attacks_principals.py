"""A principal made again under a deleted one's name is another principal: it inherits no secret scope ACL, no
endpoint grant, no entitlement and no group membership of its predecessor (against a real `aifuncs serve`)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

import aifuncs
import aifuncs.governance as gov
from aifuncs.errors import PermissionDenied
from aifuncs.governance.keys import keyring
from aifuncs.governance.principals import ENTITLEMENTS, PrincipalStore
from aifuncs.governance.secrets import Secrets

from .conftest import Secured

MESSAGE = {"messages": [{"role": "user", "content": "hi"}]}


def test_a_name_made_again_inherits_nothing(secured: Secured, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIFUNCS_ENCRYPTION_KEY", gov.generate_key())
    path = secured.home / "catalog.db"
    owner = Secrets(path, gov.whoami(), keyring())
    owner.create_scope("team")
    owner.put("team", "openai", string_value="sk-team-5d1e")
    owner.put_acl("team", "alice", "MANAGE")
    gov.create_group("analysts", members=["alice"])
    owner.put_acl("team", "analysts", "READ")
    aifuncs.endpoints.update_permissions("llm", [{"group_name": "analysts", "permission_level": "CAN_QUERY"}])
    for entitlement in ENTITLEMENTS:
        gov.grant_entitlement("alice", entitlement)
    listed = secured.call("alice", "GET", "/api/2.0/secrets/list", params={"scope": "team"})
    assert listed.status_code == 200, listed.text

    gov.delete_principal("alice")
    gov.delete_principal("analysts")
    with sqlite3.connect(path) as db:  # the predecessor's rows are gone, not merely unused
        assert db.execute("SELECT count(*) FROM secret_acls WHERE principal = 'alice'").fetchone() == (0,)
        assert db.execute("SELECT count(*) FROM secret_acls WHERE principal = 'analysts'").fetchone() == (0,)
    gov.create_user("alice")
    gov.create_group("analysts")  # without the new alice
    token = gov.create_token("alice")
    secured.tokens["alice"] = token

    new = PrincipalStore(path).get("alice")
    assert Secrets(path, new, keyring()).level("team") is None
    with pytest.raises(PermissionDenied):
        Secrets(path, new, keyring()).get("team", "openai")
    assert PrincipalStore(path).entitlements("alice") == []
    assert "analysts" not in PrincipalStore(path).groups_of("alice")
    granted = {e["display_name"] for e in aifuncs.endpoints.get_permissions("llm")["access_control_list"]}
    assert granted.isdisjoint({"alice", "analysts"}) and "bob" in granted
    for method, route, kwargs in (
        ("GET", "/api/2.0/secrets/list", {"params": {"scope": "team"}}),
        ("GET", "/api/2.0/secrets/get", {"params": {"scope": "team", "key": "openai"}}),
        ("GET", "/api/2.0/secrets/acls/list", {"params": {"scope": "team"}}),
        ("POST", "/api/2.0/secrets/put", {"json": {"scope": "team", "key": "x", "string_value": "y"}}),
    ):
        refused = secured.call("alice", method, route, **kwargs)
        assert refused.status_code == 403, (route, refused.text)
        assert "sk-team-5d1e" not in refused.text
    asked = secured.call("alice", "POST", "/serving-endpoints/llm/invocations", json=MESSAGE)
    assert asked.status_code in (403, 404), asked.text
    made = secured.call("alice", "POST", "/api/2.0/secrets/scopes/create", json={"scope": "mine"})
    assert made.status_code == 403, made.text
    assert secured.upstream.stats.requests == 0


def test_an_acl_older_than_its_principal_counts_for_nothing(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A row left from an earlier principal of the name (written by a version that kept them) is ignored."""
    monkeypatch.delenv("AIFUNCS_TOKEN", raising=False)
    path = home / "catalog.db"
    gov.create_user("carol")
    Secrets(path, gov.whoami(), None).create_scope("ops")
    Secrets(path, gov.whoami(), None).put_acl("ops", "carol", "READ")
    carol = PrincipalStore(path).get("carol")
    assert Secrets(path, carol, None).level("ops") == "READ"
    with sqlite3.connect(path) as db:  # as if granted a minute before this carol was made
        db.execute("UPDATE secret_acls SET granted_at = granted_at - 60000 WHERE principal = 'carol'")
    assert Secrets(path, carol, None).level("ops") is None
    assert Secrets(path, carol, None).list_scopes() == [{"name": "ops", "backend_type": "DATABRICKS"}]


def sql(secured: Secured, who: str, statement: str) -> list[list[str]]:
    answer = secured.call(who, "POST", "/api/2.0/sql/statements",
                          json={"statement": statement, "wait_timeout": "30s"})  # fmt: skip
    body = answer.json()
    assert body["status"]["state"] == "SUCCEEDED", body
    return list(body["result"]["data_array"])


def test_a_name_made_again_reads_none_of_its_predecessors_audit(
    secured: Secured, monkeypatch: pytest.MonkeyPatch
) -> None:
    gov.grant_entitlement("alice", ENTITLEMENTS[1])  # may create secret scopes
    made = secured.call("alice", "POST", "/api/2.0/secrets/scopes/create", json={"scope": "alices-plans"})
    assert made.status_code == 200, made.text
    assert sql(secured, "alice", "SELECT target FROM aifuncs_audit") == [["alices-plans"]]
    gov.delete_principal("alice")
    gov.create_user("alice")
    secured.tokens["alice"] = gov.create_token("alice")
    assert sql(secured, "alice", "SELECT count(*) FROM aifuncs_audit") == [["0"]]
    assert sql(secured, "alice", "SELECT count(*) FROM aifuncs_runs") == [["0"]]
