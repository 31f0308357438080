"""Principals: users, groups with members (groups in groups), service principals; who a process acts as."""

from __future__ import annotations

import getpass
from pathlib import Path

import pytest

from aifuncs.errors import ConfigError
from aifuncs.governance import InvalidToken, PrincipalStore, TokenStore, UnknownPrincipal, acting_as

pytestmark = pytest.mark.usefixtures("backend")  # each test on SQLite and on PostgreSQL


@pytest.fixture
def store(tmp_path: Path) -> PrincipalStore:
    return PrincipalStore(tmp_path / "catalog.db")


def test_users_groups_and_service_principals_share_one_namespace(store: PrincipalStore) -> None:
    store.create("alice")
    store.create("analysts", kind="group")
    store.create("etl-bot", kind="service_principal")
    assert [(p.name, p.kind) for p in store.list()] == [
        ("alice", "user"), ("analysts", "group"), ("etl-bot", "service_principal")]  # fmt: skip
    assert [p.name for p in store.list("group")] == ["analysts"]
    with pytest.raises(ConfigError, match="taken by a group"):
        store.create("analysts")
    with pytest.raises(ConfigError, match="Invalid principal name"):
        store.create("al ice")
    with pytest.raises(ConfigError, match="not a 'role'"):
        store.create("x", kind="role")
    with pytest.raises(UnknownPrincipal, match="'bob'"):
        store.get("bob")


def test_groups_hold_members_and_groups_without_circles(store: PrincipalStore) -> None:
    for name, kind in (("alice", "user"), ("etl-bot", "service_principal"), ("analysts", "group"),
                       ("staff", "group"), ("everyone", "group")):  # fmt: skip
        store.create(name, kind=kind)
    store.add_member("analysts", "alice")
    store.add_member("staff", "analysts")
    store.add_member("everyone", "staff")
    store.add_member("everyone", "etl-bot")
    assert store.members("analysts") == ["alice"]
    assert store.groups_of("alice") == {"analysts", "staff", "everyone"}
    assert store.groups_of("etl-bot") == {"everyone"}
    with pytest.raises(ConfigError, match="make a circle"):
        store.add_member("analysts", "everyone")
    with pytest.raises(ConfigError, match="cannot contain itself"):
        store.add_member("staff", "staff")
    with pytest.raises(ConfigError, match="not a group"):
        store.add_member("alice", "etl-bot")
    store.remove_member("staff", "analysts")
    assert store.groups_of("alice") == {"analysts"}
    store.delete("analysts")
    assert store.groups_of("alice") == set() and store.members("staff") == []


def test_a_process_acts_as_its_token_or_as_the_owner_of_its_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.delenv("AIFUNCS_TOKEN", raising=False)
    owner = acting_as(home)
    assert (owner.name, owner.admin, owner.implicit) == (getpass.getuser(), True, True)
    principals, tokens = PrincipalStore(home / "catalog.db"), TokenStore(home / "catalog.db")
    principals.create("alice")
    secret, _ = tokens.create("alice")
    assert acting_as(home, secret).name == "alice" and not acting_as(home, secret).admin
    monkeypatch.setenv("AIFUNCS_TOKEN", secret)
    assert acting_as(home).name == "alice"
    principals.delete("alice")  # a deleted principal's tokens stop working
    with pytest.raises(UnknownPrincipal):
        acting_as(home)
    principals.create("etl-bot")  # a user named like the service principal the token was made for
    bot_token, _ = tokens.create("etl-bot", kind="service_principal")
    with pytest.raises(InvalidToken, match="made for a service_principal"):
        acting_as(home, bot_token)
