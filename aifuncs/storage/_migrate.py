"""Versioned migrations on PostgreSQL: numbered SQL files (`migrations/NNNN_name.sql`), each applied once, in
order, recorded in `aifuncs_schema_version`. Processes starting at once take turns under one advisory lock,
and each file runs in one transaction with its record: a schema is at one version or the next, never between."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["MIGRATE_LOCK", "Migration", "migrate", "migrations"]

MIGRATE_LOCK = 0x61696675_0001  # pg_advisory_xact_lock's key while migrating ("aifu", 1)
_FILE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str


def migrations(folder: Path = Path(__file__).parent / "migrations") -> list[Migration]:
    found = []
    for path in folder.iterdir():
        match = _FILE.match(path.name)
        if match:
            found.append(Migration(int(match.group(1)), match.group(2), path.read_text()))
    found.sort(key=lambda m: m.version)
    if len({m.version for m in found}) != len(found):
        raise RuntimeError(f"Two migrations share a number in {folder}")
    return found


def migrate(conn: Any, steps: list[Migration] | None = None) -> list[int]:
    """Apply the migrations `conn`'s database lacks (conn: a psycopg connection in autocommit); the versions
    applied now."""
    applied: list[int] = []
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATE_LOCK,))
        conn.execute(
            "CREATE TABLE IF NOT EXISTS aifuncs_schema_version ("
            " version BIGINT PRIMARY KEY, name TEXT NOT NULL, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"
        )
        done = {row[0] for row in conn.execute("SELECT version FROM aifuncs_schema_version").fetchall()}
        for step in migrations() if steps is None else steps:
            if step.version in done:
                continue
            with conn.transaction():  # a savepoint: a failing file names itself and leaves nothing behind
                conn.execute(step.sql)
                conn.execute(
                    "INSERT INTO aifuncs_schema_version (version, name) VALUES (%s, %s)",
                    (step.version, step.name),
                )
            applied.append(step.version)
    return applied
