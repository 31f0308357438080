"""A home's SQLite stores copied into the shared database (`aifuncs home migrate --to postgresql://...`): the
catalog with every endpoint version, principals, tokens (hashes), grants, gateway settings, secrets (sealed
values as they are: data keys stay in the host's keys.db), the egress allow-list, the audit chain, usage and
the inference tables. One transaction: all of it or none. A row the database already has (by its key) is left
as it is, so a second run copies 0; then every table's rows are checked to be there, by key."""

from __future__ import annotations

import sqlite3
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aifuncs.errors import ConfigError
from aifuncs.storage._postgres import PgConnection, Postgres, lock_key

__all__ = ["Copied", "copy_home"]


@dataclass(frozen=True)
class _Table:
    file: str  # the SQLite file under the home
    name: str
    key: tuple[str, ...]  # what tells a row apart in both places


# In the order foreign keys need (a principal before its grants, a scope before its values).
TABLES = (
    _Table("catalog.db", "endpoints", ("name",)),
    _Table("catalog.db", "endpoint_versions", ("name", "version")),
    _Table("catalog.db", "gateways", ("name",)),
    _Table("catalog.db", "tags", ("name", "key")),
    _Table("catalog.db", "defaults", ("role",)),
    _Table("catalog.db", "revision", ("id",)),
    _Table("catalog.db", "principals", ("name",)),
    _Table("catalog.db", "members", ("group_name", "member")),
    _Table("catalog.db", "entitlements", ("principal", "entitlement")),
    _Table("catalog.db", "tokens", ("hash",)),
    _Table("catalog.db", "permissions", ("endpoint", "principal")),
    _Table("catalog.db", "audit", ("id",)),
    _Table("catalog.db", "secret_scopes", ("name",)),
    _Table("catalog.db", "secret_values", ("scope", "key")),
    _Table("catalog.db", "secret_acls", ("scope", "principal")),
    _Table("catalog.db", "egress_allowed", ("host", "port")),
    _Table("usage.db", "usage", ("request_id",)),
    _Table("payloads.db", "payloads", ("request_id",)),
)
_MADE_THERE = {"usage": {"seq"}, "payloads": {"sealed"}}  # columns the database fills itself
_IDENTITY = {"tokens": "id", "audit": "id"}  # ids kept as they were; the next one made follows them


@dataclass(frozen=True)
class Copied:
    table: str
    source: int  # rows in the home
    copied: int  # rows new to the database now
    present: int  # the home's rows found in the database afterwards (== source when verified)


def _source(home: Path, table: _Table) -> tuple[list[str], list[tuple[Any, ...]]]:
    """The table's column names and rows in the home's file; none when the file or table was never made."""
    path = home / table.file
    if not path.exists():
        return [], []
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)  # the home is read, never changed
    try:
        if (
            db.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name=?", (table.name,)).fetchone()
            is None
        ):
            return [], []
        # a name of the list above, never a user's; usage's rowid names a row an old log gave no id
        cursor = db.execute(
            f'SELECT {"rowid AS _rowid, " if table.name == "usage" else ""}* FROM "{table.name}"'
        )
        names = [d[0] for d in cursor.description]
        return names, cursor.fetchall()
    finally:
        db.close()


def _columns(conn: PgConnection, name: str) -> list[str]:
    if name == "payloads":
        from aifuncs.governance.payloads import PayloadRow

        return [*PayloadRow._fields, "sealed"]
    rows = conn.execute(
        "SELECT column_name FROM information_schema.columns WHERE table_schema = current_schema()"
        " AND table_name = ? ORDER BY ordinal_position",
        (name,),
    ).fetchall()
    return [r[0] for r in rows if r[0] not in _MADE_THERE.get(name, set())]


def _shaped(
    table: _Table, names: list[str], row: tuple[Any, ...], columns: list[str], home: Path
) -> tuple[Any, ...]:
    """A home's row as the database takes it: its columns in the database's order (one an older home lacks is
    NULL), payloads as bytes with their sealed flags, a usage row of an old log given a stable id."""
    found = dict(zip(names, row, strict=True))
    if table.name == "usage" and found.get("request_id") is None:
        found["request_id"] = f"migrated-{zlib.crc32(str(home.resolve()).encode()):08x}-{found['_rowid']}"
    if table.name == "payloads":
        from aifuncs.governance.payloads import PayloadRow, stored

        return stored(PayloadRow._make(found.get(c) for c in PayloadRow._fields))
    return tuple(found.get(c) for c in columns)


def _check_audit(conn: PgConnection, rows: list[tuple[Any, ...]], names: list[str]) -> None:
    """The database's audit chain and the home's must be one chain where both have entries."""
    if not rows:
        return
    there = {r[0]: bytes(r[1]) for r in conn.execute("SELECT id, hash FROM audit").fetchall()}
    at_id, at_hash = names.index("id"), names.index("hash")
    if any(r[at_id] in there and there[r[at_id]] != bytes(r[at_hash]) for r in rows):
        raise ConfigError(
            "The database already holds another audit chain (entries with the same ids and other hashes): migrate"
            " this home into an empty database, or into the one it was migrated into before."
        )


def copy_home(home: Path, database: Postgres) -> list[Copied]:
    """Copy every table of `home` into `database` (its schema migrated first); what each table holds."""
    sources = {table.name: _source(home, table) for table in TABLES}
    with database.transaction("catalog", immediate=True) as conn:
        conn.execute(
            "SELECT pg_advisory_xact_lock(?)", (lock_key("usage"),)
        )  # no host's usage writer between
        _check_audit(conn, sources["audit"][1], sources["audit"][0])
        counts: dict[str, int] = {}
        for table in TABLES:
            names, rows = sources[table.name]
            if not rows:
                counts[table.name] = 0
                continue
            columns = _columns(conn, table.name)
            lost = sorted(set(names) - set(columns) - {"_rowid"})
            if lost or not set(table.key) <= set(names):
                raise ConfigError(
                    f"The home's table {table.name} has columns the database's does not ({lost}) or lacks its key"
                    f" {list(table.key)}: is {home} a home of this aifuncs version? Upgrade the database's"
                    " aifuncs first."
                )
            sql = (
                f"INSERT INTO {table.name} ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})"
                " ON CONFLICT DO NOTHING"
            )  # names from the database's own catalog, values bound
            shaped = [_shaped(table, names, row, columns, home) for row in rows]
            counts[table.name] = int(conn.executemany(sql, shaped).rowcount)
            identity = _IDENTITY.get(table.name)
            if identity is not None:
                conn.execute(
                    f"SELECT setval(pg_get_serial_sequence('{table.name}', '{identity}'),"
                    f" (SELECT max({identity}) FROM {table.name}))"
                )
    return [_verified(database, home, table, sources[table.name], counts[table.name]) for table in TABLES]


def _verified(
    database: Postgres,
    home: Path,
    table: _Table,
    source: tuple[list[str], list[tuple[Any, ...]]],
    copied: int,
) -> Copied:
    names, rows = source
    if not rows:
        return Copied(table.name, 0, 0, 0)
    reader = database.reader()
    columns = _columns(reader, table.name)
    positions = [columns.index(k) for k in table.key]
    wanted = {_key(_shaped(table, names, row, columns, home), positions) for row in rows}
    there = {
        _key(r, range(len(table.key)))
        for r in reader.execute(f"SELECT {', '.join(table.key)} FROM {table.name}").fetchall()
    }
    if table.name in ("endpoints", "endpoint_versions", "gateways", "tags"):  # names compare without case
        there = {tuple(str(v).casefold() if i == 0 else v for i, v in enumerate(k)) for k in there}
        wanted = {tuple(str(v).casefold() if i == 0 else v for i, v in enumerate(k)) for k in wanted}
    return Copied(table.name, len(rows), copied, len(wanted & there))


def _key(row: Sequence[Any], positions: Any) -> tuple[Any, ...]:
    return tuple(bytes(row[i]) if isinstance(row[i], memoryview) else row[i] for i in positions)
