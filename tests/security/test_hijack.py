"""Names that cannot be hijacked: a principal made again under a deleted one's name, a stored user named like the
home's owner, the built-in default endpoints, an endpoint made again under a deleted one's name."""

from __future__ import annotations

import getpass
import sqlite3
import time
from pathlib import Path

import httpx
import pytest

import aifuncs.governance as gov
from aifuncs.errors import ConfigError
from aifuncs.governance import InvalidToken, identify
from security.conftest import Secured


def test_a_deleted_principals_tokens_die_with_it_and_pass_to_no_successor(home: Path) -> None:
    gov.create_user("bob")
    old = gov.create_token("bob")
    gov.delete_principal("bob")
    assert all(t.revoked_at is not None for t in gov.list_tokens("bob"))
    gov.create_user("bob")  # someone else, under the same name
    with pytest.raises(InvalidToken):
        identify(old, home)
    assert identify(gov.create_token("bob"), home).principal.name == "bob"  # the new bob's own token works


def test_a_token_older_than_its_principal_is_refused_even_if_never_revoked(home: Path) -> None:
    gov.create_user("carol")
    old = gov.create_token("carol")
    gov.delete_principal("carol")
    with sqlite3.connect(home / "catalog.db") as db:  # a home from before deletion revoked tokens
        db.execute("UPDATE tokens SET revoked_at = NULL WHERE principal = 'carol'")
    gov.create_user("carol")
    with pytest.raises(InvalidToken, match="deleted"):
        identify(old, home)


def test_the_homes_owner_cannot_be_shadowed_by_a_stored_user(home: Path) -> None:
    with pytest.raises(ConfigError, match="owns AIFUNCS_HOME"):
        gov.create_user(getpass.getuser())
    assert getpass.getuser() not in [p.name for p in gov.list_principals()]


def test_a_dead_principals_token_is_a_401_on_the_server(secured: Secured) -> None:
    assert secured.call("mallory", "GET", "/api/2.0/serving-endpoints").status_code == 200
    gov.delete_principal("mallory")
    gov.create_user("mallory")  # another person under the old name
    # the server rechecks a kept identity at most once a second: the old token must be refused by then
    deadline = time.monotonic() + 10
    status = secured.call("mallory", "GET", "/api/2.0/serving-endpoints").status_code
    while status != 401 and time.monotonic() < deadline:
        time.sleep(0.2)
        status = secured.call("mallory", "GET", "/api/2.0/serving-endpoints").status_code
    assert status == 401
    assert httpx.get(secured.url + "/health").status_code == 200
