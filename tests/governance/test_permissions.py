"""Endpoint permissions: CAN_VIEW < CAN_QUERY < CAN_MANAGE, default deny, through groups, admins, and the
Databricks access_control_list shape with PUT (replace) and PATCH (merge)."""

from __future__ import annotations

from pathlib import Path

import pytest

from aifuncs.errors import ConfigError
from aifuncs.governance import Principal, PrincipalStore
from aifuncs.governance.permissions import PermissionStore, level_allows

pytestmark = pytest.mark.usefixtures("backend")  # each test on SQLite and on PostgreSQL


@pytest.fixture
def store(tmp_path: Path) -> PermissionStore:
    principals = PrincipalStore(tmp_path / "catalog.db")
    for name, kind in (("alice", "user"), ("bob", "user"), ("root", "user"), ("etl", "service_principal"),
                       ("analysts", "group"), ("staff", "group")):  # fmt: skip
        principals.create(name, kind=kind, admin=name == "root")
    principals.add_member("analysts", "alice")
    principals.add_member("staff", "analysts")
    return PermissionStore(tmp_path / "catalog.db")


def test_levels_are_ordered_and_nothing_is_granted_by_default(store: PermissionStore) -> None:
    assert level_allows("CAN_MANAGE", "CAN_QUERY") and level_allows("CAN_QUERY", "CAN_VIEW")
    assert not level_allows("CAN_VIEW", "CAN_QUERY") and not level_allows(None, "CAN_VIEW")
    assert store.effective("churn", Principal("bob", "user")) is None
    assert store.effective("churn", Principal("root", "user", admin=True)) == "CAN_MANAGE"


def test_the_highest_of_own_and_group_grants_counts(store: PermissionStore) -> None:
    store.grant("churn", "staff", "CAN_VIEW")
    alice = Principal("alice", "user")
    assert store.effective("churn", alice) == "CAN_VIEW"  # through analysts, inside staff
    store.grant("churn", "alice", "CAN_QUERY")
    assert store.effective("churn", alice) == "CAN_QUERY"
    store.grant("churn", "analysts", "CAN_MANAGE")
    assert store.effective("churn", alice) == "CAN_MANAGE"
    assert store.effective("other", alice) is None  # grants are per endpoint
    with pytest.raises(ConfigError, match="Unknown permission level 'CAN_RUN'"):
        store.grant("churn", "bob", "CAN_RUN")


def test_acl_in_the_databricks_shape_with_where_each_level_comes_from(store: PermissionStore) -> None:
    store.set_acl("churn", [{"user_name": "bob", "permission_level": "CAN_QUERY"},
                            {"group_name": "analysts", "permission_level": "CAN_VIEW"},
                            {"service_principal_name": "etl", "permission_level": "CAN_QUERY"}])  # fmt: skip
    acl = {
        next(v for k, v in e.items() if k.endswith("_name") and k != "display_name"): e
        for e in store.acl("churn")
    }
    assert acl["bob"]["all_permissions"] == [{"permission_level": "CAN_QUERY", "inherited": False}]
    assert acl["alice"]["all_permissions"] == [
        {"permission_level": "CAN_VIEW", "inherited": True, "inherited_from_object": ["groups/analysts"]}
    ]
    assert "group_name" in acl["analysts"] and "service_principal_name" in acl["etl"]
    assert acl["root"]["all_permissions"][0]["inherited_from_object"] == ["admins"]
    store.update_acl("churn", [{"user_name": "alice", "permission_level": "CAN_MANAGE"}])  # merge
    assert store.effective("churn", Principal("bob", "user")) == "CAN_QUERY"
    store.set_acl("churn", [{"user_name": "alice", "permission_level": "CAN_QUERY"}])  # replace
    assert store.effective("churn", Principal("bob", "user")) is None


def test_a_bad_acl_changes_nothing(store: PermissionStore) -> None:
    store.grant("churn", "bob", "CAN_QUERY")
    bad_requests = [
        [
            {"user_name": "alice", "permission_level": "CAN_VIEW"},
            {"user_name": "nobody", "permission_level": "CAN_VIEW"},
        ],
        [{"user_name": "analysts", "permission_level": "CAN_VIEW"}],  # a group named as a user
        [{"user_name": "alice", "group_name": "staff", "permission_level": "CAN_VIEW"}],
        [{"user_name": "alice"}],
    ]
    for entries in bad_requests:
        with pytest.raises(ConfigError):
            store.set_acl("churn", entries)
    assert store.effective("churn", Principal("bob", "user")) == "CAN_QUERY"
    assert store.effective("churn", Principal("alice", "user")) is None
