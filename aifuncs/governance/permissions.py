"""Endpoint permissions in Databricks' shape: CAN_VIEW < CAN_QUERY < CAN_MANAGE, granted to users, groups and
service principals, kept in the catalog's SQLite file.

What a principal may do with an endpoint is the highest of its own grant, its groups' grants (groups in
groups included) and, for an admin, CAN_MANAGE. Everyone else has nothing (default deny). `acl` gives the
`access_control_list` with each grant's origin (`inherited`, `inherited_from_object`), as Databricks'
permissions API answers it; `set_acl` replaces an endpoint's grants (PUT), `update_acl` merges (PATCH).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from aifuncs.errors import ConfigError
from aifuncs.governance._sqlite import reader, transaction
from aifuncs.governance.principals import _SCHEMA as PRINCIPALS_SCHEMA
from aifuncs.governance.principals import Principal, PrincipalStore
from aifuncs.storage import Connection

__all__ = ["LEVELS", "PermissionStore", "level_allows"]

LEVELS = ("CAN_VIEW", "CAN_QUERY", "CAN_MANAGE")
DESCRIPTIONS = {
    "CAN_VIEW": "Can view the endpoint and its configuration",
    "CAN_QUERY": "Can query the endpoint (ai_query, invocations)",
    "CAN_MANAGE": "Can update, delete and set permissions of the endpoint",
}
_NAME_KEYS = {"user_name": "user", "group_name": "group", "service_principal_name": "service_principal"}

_SCHEMA = """
CREATE TABLE IF NOT EXISTS permissions (
    endpoint TEXT NOT NULL,
    principal TEXT NOT NULL REFERENCES principals(name) ON DELETE CASCADE,
    level TEXT NOT NULL,
    PRIMARY KEY (endpoint, principal)
);
"""


def level_allows(held: str | None, wanted: str) -> bool:
    """Whether a held level (None: nothing) covers the wanted one."""
    return held is not None and LEVELS.index(held) >= LEVELS.index(wanted)


def _higher(a: str | None, b: str | None) -> str | None:
    if a is None or b is None:
        return a or b
    return a if LEVELS.index(a) >= LEVELS.index(b) else b


class PermissionStore:
    """Grants of endpoint permissions, beside the principals they name."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.principals = PrincipalStore(path)

    def __repr__(self) -> str:
        return f"PermissionStore({str(self.path)!r})"

    @contextlib.contextmanager
    def _session(self) -> Iterator[Connection]:
        with transaction(self.path, PRINCIPALS_SCHEMA + _SCHEMA) as db:  # principals and grants: one file
            yield db

    def grant(self, endpoint: str, principal: str, level: str, db: Connection | None = None) -> None:
        """Give `principal` `level` on `endpoint` (replacing its own grant there). `db`: an open transaction to
        join, so a grant can be written with what it belongs to (an endpoint's creator, at its creation)."""
        if level not in LEVELS:
            raise ConfigError(f"Unknown permission level {level!r}; levels: {', '.join(LEVELS)}.")
        self.principals.get(principal)
        with contextlib.nullcontext(db) if db is not None else self._session() as session:
            session.execute(
                "INSERT INTO permissions (endpoint, principal, level) VALUES (?, ?, ?)"
                " ON CONFLICT (endpoint, principal) DO UPDATE SET level = excluded.level",
                (endpoint, principal, level),
            )

    def _grants(self, entries: Sequence[dict[str, Any]]) -> list[tuple[str, str]]:
        """The (principal, level) pairs of a request's entries, each checked before any is written."""
        grants = []
        for entry in entries:
            name, kind, level = _entry(entry)
            found = self.principals.get(name)
            if found.kind != kind:
                raise ConfigError(f"{name!r} is a {found.kind}, not a {kind}: name it as {found.kind}_name.")
            if level not in LEVELS:
                raise ConfigError(f"Unknown permission level {level!r}; levels: {', '.join(LEVELS)}.")
            grants.append((name, level))
        return grants

    def ensure_schema(self) -> None:
        """Create the tables, so another store's transaction can write grants without creating them."""
        with self._session():
            pass

    @staticmethod
    def grant_creator(db: Connection, endpoint: str, principal: str) -> None:
        """CAN_MANAGE for an endpoint's creator, inside the transaction that creates the endpoint."""
        db.execute(
            "INSERT INTO permissions (endpoint, principal, level) VALUES (?, ?, 'CAN_MANAGE')"
            " ON CONFLICT (endpoint, principal) DO UPDATE SET level = excluded.level",
            (endpoint, principal),
        )

    @staticmethod
    def revoke_all(db: Connection, endpoint: str) -> None:
        """Forget every grant of an endpoint, inside the transaction that deletes it: a new endpoint of the
        same name starts with none."""
        db.execute("DELETE FROM permissions WHERE endpoint = ? COLLATE NOCASE", (endpoint,))

    def managers(self, endpoint: str) -> set[str]:
        """The principals (groups included) granted CAN_MANAGE on `endpoint` directly."""
        with self._session() as db:
            rows = db.execute(
                "SELECT principal FROM permissions WHERE endpoint = ? COLLATE NOCASE AND level = 'CAN_MANAGE'",
                (endpoint,),
            ).fetchall()
        return {r[0] for r in rows}

    def effective(self, endpoint: str, principal: Principal) -> str | None:
        """The highest level `principal` holds on `endpoint`: its own, its groups', CAN_MANAGE for an admin."""
        if principal.admin:
            return "CAN_MANAGE"
        # one query on a kept connection: the principal, every group it is in, and their grants
        rows = (
            reader(self.path, PRINCIPALS_SCHEMA + _SCHEMA)
            .execute(
                "WITH RECURSIVE found(n) AS (SELECT ? UNION SELECT m.group_name FROM members m"
                " JOIN found ON m.member = found.n)"
                " SELECT level FROM permissions WHERE endpoint = ? AND principal IN (SELECT n FROM found)",
                (principal.name, endpoint),
            )
            .fetchall()
        )
        held: str | None = None
        for (level,) in rows:
            held = _higher(held, level)
        return held

    def acl(self, endpoint: str) -> list[dict[str, Any]]:
        """Databricks' `access_control_list`: every principal with a grant on the endpoint, directly or
        through a group, and admins, each with `all_permissions` naming where a level comes from."""
        with self._session() as db:
            direct = dict(
                db.execute("SELECT principal, level FROM permissions WHERE endpoint = ?", (endpoint,))
            )
        entries: dict[str, list[dict[str, Any]]] = {}
        for name, level in direct.items():
            entries.setdefault(name, []).append({"permission_level": level, "inherited": False})
        for principal in self.principals.list():
            for group in sorted(self.principals.groups_of(principal.name) & set(direct)):
                entries.setdefault(principal.name, []).append(
                    {
                        "permission_level": direct[group],
                        "inherited": True,
                        "inherited_from_object": [f"groups/{group}"],
                    }
                )
            if principal.admin:
                entries.setdefault(principal.name, []).append(
                    {"permission_level": "CAN_MANAGE", "inherited": True, "inherited_from_object": ["admins"]}
                )
        kinds = {p.name: p.kind for p in self.principals.list()}
        key = {kind: name_key for name_key, kind in _NAME_KEYS.items()}
        return [
            {key[kinds[name]]: name, "display_name": name, "all_permissions": permissions}
            for name, permissions in sorted(entries.items())
        ]

    def set_acl(self, endpoint: str, entries: Sequence[dict[str, Any]]) -> None:
        """Replace the endpoint's grants with `entries` (Databricks' PUT), all or none."""
        grants = self._grants(entries)
        with self._session() as db:
            db.execute("DELETE FROM permissions WHERE endpoint = ?", (endpoint,))
            for name, level in grants:
                self.grant(endpoint, name, level, db)

    def update_acl(self, endpoint: str, entries: Sequence[dict[str, Any]]) -> None:
        """Add or change the grants in `entries`, keeping the others (Databricks' PATCH), all or none."""
        grants = self._grants(entries)
        with self._session() as db:
            for name, level in grants:
                self.grant(endpoint, name, level, db)


def _entry(entry: Any) -> tuple[str, str, str]:
    """One `access_control_list` entry of a request: (principal, its kind, level)."""
    shape = (
        "Each access_control_list entry is an object naming one of user_name, group_name or"
        ' service_principal_name, and a permission_level, e.g. {"user_name": "alice", "permission_level":'
        ' "CAN_QUERY"}'
    )
    if not isinstance(entry, dict):
        raise ConfigError(f"{shape}; got {type(entry).__name__ if entry is not None else 'null'}.")
    named = [(entry[k], kind) for k, kind in _NAME_KEYS.items() if entry.get(k)]
    level = entry.get("permission_level")
    if len(named) != 1 or not isinstance(named[0][0], str) or not isinstance(level, str):
        raise ConfigError(f"{shape}; got the keys {sorted(str(k) for k in entry)}, names and level as text.")
    return named[0][0], named[0][1], level
