"""The one policy check: levels per action, and an endpoint one may not view reads as one that does not exist."""

from __future__ import annotations

from pathlib import Path

import pytest

from aifuncs.errors import PermissionDenied, UnknownEndpoint
from aifuncs.governance import PermissionStore, Principal, PrincipalStore
from aifuncs.governance.policy import authorize, viewable

pytestmark = pytest.mark.usefixtures("backend")  # each test on SQLite and on PostgreSQL

CATALOG = ["churn", "churn-v2", "gpt"]


@pytest.fixture
def permissions(tmp_path: Path) -> PermissionStore:
    principals = PrincipalStore(tmp_path / "catalog.db")
    principals.create("alice")
    principals.create("analysts", kind="group")
    principals.add_member("analysts", "alice")
    store = PermissionStore(tmp_path / "catalog.db")
    store.grant("churn", "analysts", "CAN_QUERY")
    store.grant("gpt", "alice", "CAN_VIEW")
    return store


def test_each_action_needs_its_level(permissions: PermissionStore) -> None:
    alice = Principal("alice", "user")
    authorize(permissions, alice, "churn", "view", known=CATALOG)
    authorize(permissions, alice, "churn", "query", known=CATALOG)
    with pytest.raises(PermissionDenied, match="may not manage endpoint 'churn': that needs CAN_MANAGE"):
        authorize(permissions, alice, "churn", "manage", known=CATALOG)
    with pytest.raises(PermissionDenied, match="needs CAN_QUERY, and it holds CAN_VIEW"):
        authorize(permissions, alice, "gpt", "query", known=CATALOG)
    admin = Principal("root", "user", admin=True)
    for endpoint in CATALOG:
        authorize(permissions, admin, endpoint, "manage", known=CATALOG)


def test_an_endpoint_one_may_not_view_reads_exactly_as_a_missing_one(permissions: PermissionStore) -> None:
    alice = Principal("alice", "user")
    with pytest.raises(UnknownEndpoint) as hidden:
        authorize(permissions, alice, "churn-v2", "query", known=CATALOG)
    with pytest.raises(UnknownEndpoint) as missing:
        authorize(permissions, alice, "churn-v3", "query", known=CATALOG)
    assert str(hidden.value).replace("churn-v2", "X") == str(missing.value).replace("churn-v3", "X")
    assert hidden.value.suggestions == ["churn"]  # never the hidden churn-v2
    assert viewable(permissions, alice, CATALOG) == ["churn", "gpt"]
    assert viewable(permissions, Principal("bob", "user"), CATALOG) == []
