"""The home's owner makes tokens for itself; one authenticates as that admin, and nobody else can make or fake one."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

import aifuncs
import aifuncs.governance as gov
from aifuncs.errors import PermissionDenied
from aifuncs.governance import InvalidToken, UnknownPrincipal, identify, owner_of


@pytest.fixture
def users(home: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    monkeypatch.delenv("AIFUNCS_TOKEN", raising=False)
    gov.create_user("admin", admin=True)
    gov.create_user("alice")
    return {"admin": gov.create_token("admin"), "alice": gov.create_token("alice")}


def test_an_owner_token_acts_as_the_owner(home: Path, users: dict[str, str]) -> None:
    secret = gov.create_token(comment="laptop")
    me = identify(secret, home).principal
    assert (me.name, me.admin, me.implicit) == (owner_of(home), True, True)
    assert [t.kind for t in gov.list_tokens(owner_of(home))] == ["owner"]
    assert secret.startswith("aif_u_")  # a user's token to a secret scanner


def test_nobody_else_makes_an_owner_token(
    home: Path, users: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    owner = owner_of(home)
    for who in ("admin", "alice"):
        monkeypatch.setenv("AIFUNCS_TOKEN", users[who])
        with pytest.raises(PermissionDenied):
            gov.create_token(owner)
    monkeypatch.delenv("AIFUNCS_TOKEN")
    assert gov.list_tokens(owner) == []


def test_a_stored_users_token_never_becomes_the_owners(home: Path, users: dict[str, str]) -> None:
    # Even renamed in the store to the owner's name, alice's token is a user's: refused, not the owner.
    with sqlite3.connect(home / "catalog.db") as db:
        db.execute("UPDATE tokens SET principal = ? WHERE principal = 'alice'", (owner_of(home),))
    with pytest.raises((InvalidToken, UnknownPrincipal)):
        identify(users["alice"], home)


def test_an_owner_token_of_a_former_owner_is_refused(home: Path, users: dict[str, str]) -> None:
    secret = gov.create_token()
    with sqlite3.connect(home / "catalog.db") as db:  # as if the home now belonged to another account
        db.execute("UPDATE tokens SET principal = 'someone-else' WHERE kind = 'owner'")
    with pytest.raises(InvalidToken, match="no longer owns"):
        identify(secret, home)


def test_a_revoked_owner_token_stops(home: Path, users: dict[str, str]) -> None:
    secret = gov.create_token()
    gov.revoke_token(gov.list_tokens(owner_of(home))[0].id)
    with pytest.raises(InvalidToken, match="revoked"):
        identify(secret, home)


def test_an_owner_token_manages_over_rest(home: Path, users: dict[str, str]) -> None:
    from starlette.testclient import TestClient

    from aifuncs.server import app

    aifuncs.endpoints.create("doubler", kind="python", function="builtins:abs")
    secret = gov.create_token()
    with TestClient(app()) as client:
        headers = {"Authorization": f"Bearer {secret}"}
        listed = client.get("/api/2.0/serving-endpoints", headers=headers)
        assert listed.status_code == 200
        assert [e["permission_level"] for e in listed.json()["endpoints"]] == ["CAN_MANAGE"]
        alice = {"Authorization": f"Bearer {users['alice']}"}
        assert client.get("/api/2.0/serving-endpoints/doubler", headers=alice).status_code == 404
