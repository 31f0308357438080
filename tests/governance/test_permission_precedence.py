"""Permission precedence against a small reference model: the highest of one's own grant and every group's
one is in (groups in groups included); admins CAN_MANAGE; everyone else nothing."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aifuncs.governance import PermissionStore, Principal, PrincipalStore
from aifuncs.governance.permissions import LEVELS

pytestmark = pytest.mark.usefixtures("backend")  # each test on SQLite and on PostgreSQL

USERS = ["u1", "u2", "u3"]
GROUPS = ["g1", "g2", "g3", "g4"]
ENDPOINTS = ["e1", "e2"]
counter = itertools.count()


def reference(
    user: str, endpoint: str, members: set[tuple[str, str]], grants: dict[tuple[str, str], str]
) -> str | None:
    groups: set[str] = set()
    frontier = {user}
    while frontier:  # every group reached from the user along memberships
        reached = {g for g, m in members if m in frontier} - groups
        groups |= reached
        frontier = reached
    held = [grants[(endpoint, p)] for p in {user} | groups if (endpoint, p) in grants]
    return max(held, key=LEVELS.index) if held else None


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    members=st.sets(st.tuples(st.sampled_from(GROUPS), st.sampled_from(USERS + GROUPS)), max_size=8),
    grants=st.dictionaries(
        st.tuples(st.sampled_from(ENDPOINTS), st.sampled_from(USERS + GROUPS)),
        st.sampled_from(LEVELS),
        max_size=8,
    ),
)
def test_effective_level_matches_the_reference(
    tmp_path: Path, members: set[tuple[str, str]], grants: dict[tuple[str, str], str]
) -> None:
    path = tmp_path / f"catalog-{next(counter)}.db"
    principals = PrincipalStore(path)
    for name in USERS:
        principals.create(name)
    for name in GROUPS:
        principals.create(name, kind="group")
    accepted: set[tuple[str, str]] = set()
    for group, member in sorted(members):
        try:
            principals.add_member(group, member)
            accepted.add((group, member))
        except Exception:
            pass  # a circle or a group in itself: refused, and the reference must not count it either
    store = PermissionStore(path)
    for (endpoint, name), level in grants.items():
        store.grant(endpoint, name, level)
    for user, endpoint in itertools.product(USERS, ENDPOINTS):
        assert store.effective(endpoint, Principal(user, "user")) == reference(
            user, endpoint, accepted, grants
        )
        assert store.effective(endpoint, Principal(user, "user", admin=True)) == "CAN_MANAGE"


def test_circles_are_refused(tmp_path: Path) -> None:
    principals = PrincipalStore(tmp_path / "catalog.db")
    for name in ("a", "b", "c"):
        principals.create(name, kind="group")
    principals.add_member("a", "b")
    principals.add_member("b", "c")
    with pytest.raises(Exception, match="circle"):
        principals.add_member("c", "a")
