"""The audit log: every change recorded with who made it, append-only, hash-chained, never a secret."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from pg import stored_database

import aifuncs
import aifuncs.governance as gov
from aifuncs.cli import main

pytestmark = pytest.mark.usefixtures("backend")  # each test on SQLite and on PostgreSQL


@pytest.fixture
def changes(home: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A day's changes: the owner makes alice and a group, alice makes an endpoint and a token of her own."""
    monkeypatch.delenv("AIFUNCS_TOKEN", raising=False)
    gov.create_user("alice")
    gov.create_group("analysts", members=["alice"])
    alices = gov.create_token("alice")
    gov.PrincipalStore(home / "catalog.db").grant_entitlement(
        "alice", gov.CREATE_ENDPOINTS
    )  # unaudited: a store
    monkeypatch.setenv("AIFUNCS_TOKEN", alices)
    aifuncs.endpoints.create("doubler", kind="forecast")  # a kind that runs no code of the author's choosing
    aifuncs.endpoints.update_permissions(
        "doubler", [{"group_name": "analysts", "permission_level": "CAN_VIEW"}]
    )
    aifuncs.endpoints.set_rate_limits("doubler", [{"calls": 60, "key": "user"}])
    second = gov.create_token(comment="laptop")
    gov.revoke_token(gov.list_tokens()[-1].id)
    monkeypatch.delenv("AIFUNCS_TOKEN")
    return alices + second


def test_every_change_is_recorded_with_who_made_it(changes: str, home: Path) -> None:
    owner = gov.whoami().name
    entries = gov.audit_log()
    assert [(e.actor, e.action, e.target) for e in entries] == [
        (owner, "users.create", "alice"),
        (owner, "groups.create", "analysts"),
        (owner, "groups.add-member", "analysts"),
        (owner, "tokens.create", "alice"),
        ("alice", "endpoints.create", "doubler"),
        ("alice", "permissions.update", "doubler"),
        ("alice", "ai-gateway.put", "doubler"),
        ("alice", "tokens.create", "alice"),
        ("alice", "tokens.revoke", f"token {entries[-1].details['token_id']}"),
    ]
    assert gov.verify_audit() is None
    for path in home.rglob("*"):  # no token secret anywhere, audit log included
        if path.is_file():
            data = path.read_bytes()
            assert changes[:36].encode() not in data and changes[36:].encode() not in data, path
    assert changes[:36].encode() not in stored_database() and changes[36:].encode() not in stored_database()
    owner_connection = aifuncs.connect()
    assert owner_connection.sql("SELECT count(*) FROM aifuncs_audit").fetchall() == [
        (9,)
    ]  # the owner reads all


def test_each_principal_reads_its_own_entries(changes: str, monkeypatch: pytest.MonkeyPatch) -> None:
    token = gov.create_token("alice")
    con = aifuncs.connect(token=token)
    actions = con.sql("SELECT DISTINCT actor FROM aifuncs_audit").fetchall()
    assert actions == [("alice",)]


def test_tampering_breaks_the_chain_where_it_happened(
    changes: str, home: Path, capsys: pytest.CaptureFixture[str], backend: str
) -> None:
    if backend != "sqlite":
        pytest.skip("edits the SQLite file by hand (the shared database's guard: tests/storage/test_seam.py)")
    db = sqlite3.connect(home / "catalog.db")
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        db.execute("UPDATE audit SET actor = 'mallory' WHERE id = 5")
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        db.execute("DELETE FROM audit WHERE id = 5")
    assert main(["audit", "verify"]) == 0
    assert "intact: 9 entries" in capsys.readouterr().out
    # one with the file in hand drops the guards and edits an entry: the chain shows where
    db.execute("DROP TRIGGER audit_no_update")
    db.execute("UPDATE audit SET details = '{}' WHERE id = 6")
    db.commit()
    assert gov.verify_audit() == 6
    assert main(["audit", "verify"]) == 1
    assert "broken at entry 6" in capsys.readouterr().out
    db.execute("DROP TRIGGER audit_no_delete")
    db.execute("DELETE FROM audit WHERE id = 3")
    db.commit()
    assert gov.verify_audit() == 4  # a removed entry leaves a gap in the chain
