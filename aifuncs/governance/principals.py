"""Principals: users, groups (with members, groups in groups) and service principals.

Kept in the catalog's SQLite file beside the endpoints. One person on one machine sets nothing up: a process
without a token acts as the OS account that owns `AIFUNCS_HOME`, an admin of it (`acting_as`). A process with
a token (`AIFUNCS_TOKEN`, or `token=`) acts as the token's principal.
"""

from __future__ import annotations

import builtins
import contextlib
import os
import pwd
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from aifuncs.errors import ConfigError
from aifuncs.governance import _revision as revision
from aifuncs.governance._sqlite import has_table, transaction
from aifuncs.governance.tokens import OWNER, InvalidToken, Token, TokenStore
from aifuncs.storage import Connection

__all__ = [
    "CREATE_ENDPOINTS",
    "CREATE_SECRET_SCOPES",
    "ENTITLEMENTS",
    "Principal",
    "PrincipalStore",
    "UnknownPrincipal",
    "acting_as",
    "owner_of",
    "principal_of",
]

KINDS = ("user", "group", "service_principal")
# What a principal may do beyond its grants, named as Databricks' SCIM entitlements are. Admins hold them all.
CREATE_ENDPOINTS = "allow-endpoint-create"
CREATE_SECRET_SCOPES = "allow-secret-scope-create"
ENTITLEMENTS = (CREATE_ENDPOINTS, CREATE_SECRET_SCOPES)
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@+-]{0,127}$")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS principals (
    name TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    admin INTEGER NOT NULL DEFAULT 0,
    created_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS members (
    group_name TEXT NOT NULL REFERENCES principals(name) ON DELETE CASCADE,
    member TEXT NOT NULL REFERENCES principals(name) ON DELETE CASCADE,
    PRIMARY KEY (group_name, member)
);
CREATE TABLE IF NOT EXISTS entitlements (
    principal TEXT NOT NULL REFERENCES principals(name) ON DELETE CASCADE,
    entitlement TEXT NOT NULL,
    PRIMARY KEY (principal, entitlement)
);
"""


class UnknownPrincipal(ConfigError):
    """A name that is no user, group or service principal here."""


@dataclass(frozen=True)
class Principal:
    name: str
    kind: str  # user | group | service_principal
    admin: bool = False
    implicit: bool = False  # the OS account that owns AIFUNCS_HOME, not stored
    # When this principal was made: a name deleted and made again is another principal, which inherits
    # nothing of the first (its tokens, its rows).
    created_at: datetime | None = field(default=None, compare=False)


def owner_of(home: Path) -> str:
    """The OS account that owns `home` (the current account when it does not exist yet)."""
    uid = home.stat().st_uid if home.exists() else os.getuid()
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


class PrincipalStore:
    """Users, groups and service principals in a SQLite file (by default the catalog's)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __repr__(self) -> str:
        return f"PrincipalStore({str(self.path)!r})"

    def transaction(self) -> contextlib.AbstractContextManager[Connection]:
        return transaction(self.path, _SCHEMA + revision.SCHEMA)

    def create(self, name: str, *, kind: str = "user", admin: bool = False) -> Principal:
        if kind not in KINDS:
            raise ConfigError(f"A principal is a {', '.join(KINDS[:-1])} or {KINDS[-1]}, not a {kind!r}.")
        if not _NAME.match(name):
            raise ConfigError(
                f"Invalid principal name {name!r}: letters, digits and . _ @ + - (starting with a letter or digit)."
            )
        with self.transaction() as db:
            taken = db.execute("SELECT kind FROM principals WHERE name = ?", (name,)).fetchone()
            if taken is not None:
                raise ConfigError(
                    f"The name {name!r} is taken by a {taken[0]}; names are shared by all kinds."
                )
            created = datetime.now(UTC)
            db.execute(
                "INSERT INTO principals (name, kind, admin, created_at) VALUES (?, ?, ?, ?)",
                (name, kind, int(admin), created.isoformat()),
            )
        return Principal(name, kind, admin, created_at=created)

    def get(self, name: str) -> Principal:
        with self.transaction() as db:
            row = db.execute(
                "SELECT name, kind, admin, created_at FROM principals WHERE name = ?", (name,)
            ).fetchone()
        if row is None:
            raise UnknownPrincipal(f"There is no user, group or service principal {name!r}.")
        return _principal(row)

    def list(self, kind: str | None = None) -> list[Principal]:
        with self.transaction() as db:
            rows = db.execute(
                "SELECT name, kind, admin, created_at FROM principals WHERE ? IS NULL OR kind = ? ORDER BY name",
                (kind, kind),
            ).fetchall()
        return [_principal(r) for r in rows]

    def delete(self, name: str) -> None:
        self.get(name)
        with self.transaction() as db:
            db.execute("DELETE FROM principals WHERE name = ?", (name,))  # memberships go with it
            # and its secret scope ACLs (no foreign key: an ACL may name `users`, which is no principal)
            if has_table(db, "secret_acls"):
                db.execute("DELETE FROM secret_acls WHERE principal = ?", (name,))
            revision.bump(db)  # bindings that named it (its grants, its groups) are made again

    def add_member(self, group: str, member: str) -> None:
        """Put a user, service principal or group into a group (a group may not end up inside itself)."""
        if self.get(group).kind != "group":
            raise ConfigError(f"{group!r} is not a group; members go into groups.")
        self.get(member)
        if group == member:
            raise ConfigError(f"The group {group!r} cannot contain itself.")
        if self.get(member).kind == "group" and group in self._within(member):
            raise ConfigError(f"{member!r} already contains {group!r}: adding it would make a circle.")
        with self.transaction() as db:
            db.execute(
                "INSERT INTO members (group_name, member) VALUES (?, ?) ON CONFLICT DO NOTHING",
                (group, member),
            )
            revision.bump(db)

    def remove_member(self, group: str, member: str) -> None:
        with self.transaction() as db:
            db.execute("DELETE FROM members WHERE group_name = ? AND member = ?", (group, member))
            revision.bump(db)

    def members(self, group: str) -> builtins.list[str]:
        with self.transaction() as db:
            rows = db.execute(
                "SELECT member FROM members WHERE group_name = ? ORDER BY member", (group,)
            ).fetchall()
        return [r[0] for r in rows]

    def grant_entitlement(self, name: str, entitlement: str) -> None:
        _check_entitlement(entitlement)
        self.get(name)
        with self.transaction() as db:
            db.execute(
                "INSERT INTO entitlements (principal, entitlement) VALUES (?, ?) ON CONFLICT DO NOTHING",
                (name, entitlement),
            )

    def revoke_entitlement(self, name: str, entitlement: str) -> None:
        _check_entitlement(entitlement)
        with self.transaction() as db:
            db.execute(
                "DELETE FROM entitlements WHERE principal = ? AND entitlement = ?", (name, entitlement)
            )

    def entitlements(self, name: str) -> builtins.list[str]:
        """The entitlements granted to `name` itself (not those it has through its groups)."""
        with self.transaction() as db:
            rows = db.execute(
                "SELECT entitlement FROM entitlements WHERE principal = ? ORDER BY entitlement", (name,)
            ).fetchall()
        return [r[0] for r in rows]

    def entitled(self, principal: Principal, entitlement: str) -> bool:
        """Whether `principal` holds `entitlement`: an admin always, anyone else when granted it directly or
        through a group."""
        if principal.admin:
            return True
        holders = {principal.name, *self.groups_of(principal.name)}
        with self.transaction() as db:
            rows = db.execute(
                "SELECT principal FROM entitlements WHERE entitlement = ?", (entitlement,)
            ).fetchall()
        return any(r[0] in holders for r in rows)

    def groups_of(self, name: str) -> set[str]:
        """Every group `name` belongs to, directly or through other groups."""
        return self._closure(name, start="member", reach="group_name")

    def _within(self, group: str) -> set[str]:
        """Every principal inside `group`, directly or through other groups."""
        return self._closure(group, start="group_name", reach="member")

    def _closure(self, name: str, *, start: str, reach: str) -> set[str]:
        """Names reached from `name` along memberships, one way (the columns are fixed names, not input)."""
        with self.transaction() as db:
            rows = db.execute(
                f"WITH RECURSIVE found(n) AS (SELECT {reach} FROM members WHERE {start} = ?"
                f" UNION SELECT m.{reach} FROM members m JOIN found ON m.{start} = found.n) SELECT n FROM found",
                (name,),
            ).fetchall()
        return {r[0] for r in rows}


def _principal(row: tuple[str, str, int, str | None]) -> Principal:
    return Principal(
        row[0], row[1], bool(row[2]), created_at=datetime.fromisoformat(row[3]) if row[3] else None
    )


def _check_entitlement(entitlement: str) -> None:
    if entitlement not in ENTITLEMENTS:
        raise ConfigError(f"Unknown entitlement {entitlement!r}: use one of {', '.join(ENTITLEMENTS)}.")


def acting_as(home: Path, token: str | None = None) -> Principal:
    """Who a process acts as: the token's principal (checked: unknown, expired and revoked tokens are
    refused), else the OS account that owns `home`, an admin of it."""
    token = token if token is not None else os.environ.get("AIFUNCS_TOKEN") or None
    if token is None:
        return Principal(owner_of(home), "user", admin=True, implicit=True)
    return principal_of(home, TokenStore(home / "catalog.db").authenticate(token))


def principal_of(home: Path, record: Token) -> Principal:
    """The principal a live token's record acts as (the checks `acting_as` makes after the lookup)."""
    path = home / "catalog.db"
    if record.kind == OWNER:
        # The home's owner's token: the owner only while that account still owns the home (a home handed to
        # another account leaves the former owner's tokens without power).
        if record.principal != owner_of(home):
            raise InvalidToken(
                f"The token {record.display} belongs to {record.principal!r}, which no longer owns AIFUNCS_HOME."
            )
        return Principal(record.principal, "user", admin=True, implicit=True)
    principal = PrincipalStore(path).get(record.principal)  # a deleted principal's tokens stop working
    if principal.created_at is not None and record.created_at < principal.created_at:
        # made for an earlier principal of this name, deleted since: the new one inherits none of its tokens
        raise InvalidToken(f"The token {record.display} belongs to a principal that was deleted.")
    if principal.name == owner_of(home):
        raise InvalidToken(
            f"The token {record.display} names {principal.name!r}, which is also the OS account that owns"
            " AIFUNCS_HOME: an admin deletes that stored principal and makes the user again under another name."
        )
    if principal.kind != record.kind:
        raise InvalidToken(
            f"The token {record.display} was made for a {record.kind}, not the {principal.kind} it names."
        )
    return principal
