"""Storage of the catalog: one SQLite file under AIFUNCS_HOME, safe for several processes at once, or the
shared database when AIFUNCS_DATABASE_URL is set (aifuncs/storage), safe for several hosts at once.

The catalog's revision counts its governance changes (endpoints made, updated or deleted, gateway settings,
permissions, defaults): whatever a process keeps of a binding (a DuckDB function, a server's binding) is
keyed by it, so a change holds for open connections too, within a second in other processes.
"""

from __future__ import annotations

import builtins
import json
import sqlite3
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aifuncs._endpoint import Endpoint
from aifuncs._fork import ProcessLocal
from aifuncs._home import private_file
from aifuncs._wal import use_wal
from aifuncs.governance import _revision as revision
from aifuncs.storage import Connection, shared

_SCHEMA = """
CREATE TABLE IF NOT EXISTS endpoints (
    name TEXT PRIMARY KEY COLLATE NOCASE,
    kind TEXT NOT NULL,
    options TEXT NOT NULL,
    description TEXT NOT NULL DEFAULT '',
    version INTEGER NOT NULL,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS endpoint_versions (
    name TEXT NOT NULL COLLATE NOCASE,
    version INTEGER NOT NULL,
    kind TEXT NOT NULL,
    options TEXT NOT NULL,
    description TEXT NOT NULL DEFAULT '',
    updated_at TEXT NOT NULL,
    PRIMARY KEY (name, version)
);
CREATE TABLE IF NOT EXISTS gateways (
    name TEXT PRIMARY KEY COLLATE NOCASE,
    config TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS tags (
    name TEXT NOT NULL COLLATE NOCASE,
    key TEXT NOT NULL,
    value TEXT,
    PRIMARY KEY (name, key)
);
CREATE TABLE IF NOT EXISTS pending_configs (
    name TEXT PRIMARY KEY COLLATE NOCASE,
    kind TEXT NOT NULL,
    options TEXT NOT NULL,
    description TEXT NOT NULL DEFAULT '',
    state TEXT NOT NULL,
    message TEXT NOT NULL DEFAULT '',
    requested_at TEXT NOT NULL,
    requested_by TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS serving_processes (
    process TEXT PRIMARY KEY,
    started_at TEXT NOT NULL,
    seen_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS config_loads (
    name TEXT NOT NULL COLLATE NOCASE,
    requested_at TEXT NOT NULL,
    process TEXT NOT NULL,
    state TEXT NOT NULL,
    message TEXT NOT NULL DEFAULT '',
    reported_at TEXT NOT NULL,
    PRIMARY KEY (name, requested_at, process)
);
CREATE TABLE IF NOT EXISTS defaults (
    role TEXT PRIMARY KEY,
    name TEXT NOT NULL
);
"""  # and the revision's table (governance/_revision.py)

FORGET_SERVING_S = 3600.0  # a server process unseen this long is gone for good
REVISION_MAX_AGE_S = 1.0  # how stale a process's idea of the revision may be: one read a second at most


bump_revision = revision.bump


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def _row_to_endpoint(row: Any) -> Endpoint:
    return Endpoint.from_stored(
        row["name"],
        row["kind"],
        json.loads(row["options"]),
        description=row["description"],
        version=row["version"],
        created_at=datetime.fromisoformat(row["created_at"]),
        updated_at=datetime.fromisoformat(row["updated_at"]),
    )


class SqliteStore:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._local = ProcessLocal()
        self._revision: tuple[float, int] | None = None  # (when read, value), for all threads
        self._shared = shared(path)
        if self._shared is not None:
            self._shared.pool()  # reached and migrated now: an unreachable database fails at start
            return
        db = self._file()
        use_wal(db)  # kept in the file: later connections need not ask again
        db.executescript(_SCHEMA + revision.SCHEMA)

    def _file(self) -> sqlite3.Connection:
        # One connection per thread (and process), kept: opening one and reading the schema again cost ~0.6 ms
        # a lookup, paid by every AI call a query plans. Autocommit: each read sees what others committed.
        db: sqlite3.Connection | None = getattr(self._local.values, "db", None)
        if db is None:
            db = self._local.values.db = sqlite3.connect(
                private_file(self.path), timeout=30, isolation_level=None
            )
            db.row_factory = sqlite3.Row
        return db

    @contextmanager
    def _connect(self) -> Iterator[Connection]:
        yield self._file() if self._shared is None else self._shared.reader()

    @contextmanager
    def _write(self) -> Iterator[Connection]:
        if self._shared is not None:
            with self._shared.transaction(self.path.stem, immediate=True) as conn:  # as BEGIN IMMEDIATE
                yield conn
            return
        db = self._file()
        db.execute("BEGIN IMMEDIATE")  # take the write lock up front: no lost updates between processes
        try:
            yield db
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:  # the connection is kept: never leave it inside a transaction
                db.execute("ROLLBACK")
            raise

    def revision(self) -> int:
        """The catalog's revision, read from the file at most once a second (and at once after a change made
        through this store)."""
        known = self.known_revision()
        if known is not None:
            return known
        with self._connect() as db:
            row = db.execute("SELECT value FROM revision WHERE id = 1").fetchone()
        value = 0 if row is None else int(row[0])
        self._revision = (time.monotonic(), value)
        return value

    def known_revision(self) -> int | None:
        """The revision as last read, while under a second old; None when it must be read again."""
        found = self._revision
        if found is None or time.monotonic() - found[0] > REVISION_MAX_AGE_S:
            return None
        return found[1]

    def bump_revision(self) -> None:
        """Count a governance change written elsewhere (permissions, in their own transaction)."""
        with self._write() as db:
            bump_revision(db)
        self._revision = None

    def get(self, name: str) -> Endpoint | None:
        with self._connect() as db:
            row = db.execute("SELECT * FROM endpoints WHERE name = ?", (name,)).fetchone()
        return _row_to_endpoint(row) if row else None

    def list(self) -> builtins.list[Endpoint]:
        with self._connect() as db:
            rows = db.execute("SELECT * FROM endpoints ORDER BY name").fetchall()
        return [_row_to_endpoint(r) for r in rows]

    def names(self) -> builtins.list[str]:
        with self._connect() as db:
            return [r[0] for r in db.execute("SELECT name FROM endpoints ORDER BY name")]

    def insert(self, endpoint: Endpoint, also: Callable[[Connection], None] | None = None) -> bool:
        """Add a new endpoint at version 1; False when the name is taken. `also` writes more in the same
        transaction (the creator's grant): both land or neither."""
        now = _now()
        with self._write() as db:
            if db.execute("SELECT 1 FROM endpoints WHERE name = ?", (endpoint.name,)).fetchone():
                return False
            options = json.dumps(endpoint.stored_options(), sort_keys=True)
            db.execute(
                "INSERT INTO endpoints VALUES (?, ?, ?, ?, 1, ?, ?)",
                (endpoint.name, endpoint.kind, options, endpoint.description, now, now),
            )
            self._record_version(db, endpoint.name, 1, endpoint.kind, options, endpoint.description, now)
            if also is not None:
                also(db)
            bump_revision(db)
        self._revision = None
        return True

    def replace(
        self, endpoint: Endpoint, also: Callable[[Connection], bool] | None = None
    ) -> Endpoint | None:
        """Store new options/description for an existing endpoint, bumping its version. `also` runs first in
        the same transaction; when it answers False nothing is stored (None)."""
        now = _now()
        with self._write() as db:
            row = db.execute("SELECT version FROM endpoints WHERE name = ?", (endpoint.name,)).fetchone()
            if row is None or (also is not None and not also(db)):
                return None
            if also is None:  # a config stored directly supersedes one waiting for its models
                db.execute("DELETE FROM pending_configs WHERE name = ?", (endpoint.name,))
            version = row[0] + 1
            options = json.dumps(endpoint.stored_options(), sort_keys=True)
            db.execute(
                "UPDATE endpoints SET kind = ?, options = ?, description = ?, version = ?, updated_at = ?"
                " WHERE name = ?",
                (endpoint.kind, options, endpoint.description, version, now, endpoint.name),
            )
            self._record_version(
                db, endpoint.name, version, endpoint.kind, options, endpoint.description, now
            )
            bump_revision(db)
        self._revision = None
        return self.get(endpoint.name)

    def delete(self, name: str, also: Callable[[Connection], None] | None = None) -> bool:
        with self._write() as db:
            deleted = db.execute("DELETE FROM endpoints WHERE name = ?", (name,)).rowcount
            db.execute("DELETE FROM endpoint_versions WHERE name = ?", (name,))
            db.execute("DELETE FROM gateways WHERE name = ?", (name,))
            db.execute("DELETE FROM tags WHERE name = ?", (name,))
            db.execute("DELETE FROM pending_configs WHERE name = ?", (name,))
            db.execute("DELETE FROM config_loads WHERE name = ?", (name,))
            if deleted and also is not None:
                also(db)
            if deleted:
                bump_revision(db)
        self._revision = None
        return bool(deleted)

    def gateway(self, name: str) -> dict[str, object]:
        """The endpoint's AI gateway configuration ({} when none was set)."""
        with self._connect() as db:
            row = db.execute("SELECT config FROM gateways WHERE name = ?", (name,)).fetchone()
        return {} if row is None else dict(json.loads(row["config"]))

    def set_gateway(self, name: str, config: Mapping[str, object]) -> bool:
        """Store the endpoint's AI gateway configuration; False when the endpoint is gone."""
        with self._write() as db:
            if db.execute("SELECT 1 FROM endpoints WHERE name = ?", (name,)).fetchone() is None:
                return False
            db.execute(
                "INSERT INTO gateways (name, config) VALUES (?, ?)"
                " ON CONFLICT (name) DO UPDATE SET config = excluded.config",
                (name, json.dumps(config, sort_keys=True)),
            )
            bump_revision(db)
        self._revision = None
        return True

    def pending(self, name: str) -> dict[str, Any] | None:
        """The endpoint's config update waiting for its models, if any (as stored, options decoded)."""
        with self._connect() as db:
            row = db.execute("SELECT * FROM pending_configs WHERE name = ?", (name,)).fetchone()
        return None if row is None else {**dict(row), "options": json.loads(row["options"])}

    def set_pending(self, endpoint: Endpoint, state: str, message: str, by: str) -> str | None:
        """Store `endpoint` as the endpoint's pending config (replacing one there); its time, or None when the
        endpoint is gone."""
        now = _now()
        options = json.dumps(endpoint.stored_options(), sort_keys=True)
        with self._write() as db:
            if db.execute("SELECT 1 FROM endpoints WHERE name = ?", (endpoint.name,)).fetchone() is None:
                return None
            db.execute(
                "INSERT INTO pending_configs VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (name) DO UPDATE SET"
                " kind = excluded.kind, options = excluded.options, description = excluded.description,"
                " state = excluded.state, message = excluded.message, requested_at = excluded.requested_at,"
                " requested_by = excluded.requested_by",
                (endpoint.name, endpoint.kind, options, endpoint.description, state, message, now, by),
            )
            bump_revision(db)
        self._revision = None
        return now

    def apply_pending(self, endpoint: Endpoint, requested_at: str) -> Endpoint | None:
        """Store the pending config made at `requested_at` as the endpoint's next version and remove it, in one
        transaction; None when another took its place (or the endpoint is gone)."""

        def taken(db: Connection) -> bool:
            return bool(
                db.execute(
                    "DELETE FROM pending_configs WHERE name = ? AND requested_at = ?",
                    (endpoint.name, requested_at),
                ).rowcount
            )

        return self.replace(endpoint, also=taken)

    def settle_pending(self, name: str, requested_at: str, state: str, message: str) -> bool:
        """Mark the pending config made at `requested_at` failed (or gone, `state` ""); False when another
        took its place."""
        with self._write() as db:
            if state:
                changed = db.execute(
                    "UPDATE pending_configs SET state = ?, message = ? WHERE name = ? AND requested_at = ?",
                    (state, message, name, requested_at),
                ).rowcount
            else:
                changed = db.execute(
                    "DELETE FROM pending_configs WHERE name = ? AND requested_at = ?", (name, requested_at)
                ).rowcount
            bump_revision(db)
        self._revision = None
        return bool(changed)

    def pendings(self) -> builtins.list[dict[str, Any]]:
        """Every pending config in progress (as `pending` shows one)."""
        with self._connect() as db:
            rows = db.execute("SELECT * FROM pending_configs WHERE state = ? ORDER BY name", ("IN_PROGRESS",))
            found = rows.fetchall()
        return [{**dict(row), "options": json.loads(row["options"])} for row in found]

    def seen_serving(self, process: str) -> None:
        """Note a server process with model workers as running (renewed while it runs)."""
        now = _now()
        # a process killed outright never forgets itself: its row goes once long unseen (each restart adds one)
        gone = datetime.fromtimestamp(time.time() - FORGET_SERVING_S, UTC).isoformat(timespec="milliseconds")
        with self._write() as db:
            db.execute(
                "INSERT INTO serving_processes VALUES (?, ?, ?) ON CONFLICT (process) DO UPDATE SET"
                " seen_at = excluded.seen_at",
                (process, now, now),
            )
            db.execute("DELETE FROM serving_processes WHERE seen_at < ?", (gone,))

    def forget_serving(self, process: str) -> None:
        with self._write() as db:
            db.execute("DELETE FROM serving_processes WHERE process = ?", (process,))

    def serving(self, within_s: float) -> builtins.list[str]:
        """The server processes seen running in the last `within_s` seconds."""
        since = datetime.fromtimestamp(time.time() - within_s, UTC).isoformat(timespec="milliseconds")
        with self._connect() as db:
            rows = db.execute(
                "SELECT process FROM serving_processes WHERE seen_at >= ? ORDER BY process", (since,)
            ).fetchall()
        return [row[0] for row in rows]

    def report_load(self, name: str, requested_at: str, process: str, state: str, message: str) -> None:
        """One server process's load of the pending config made at `requested_at`: READY, or FAILED with why."""
        with self._write() as db:
            db.execute(
                "INSERT INTO config_loads VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (name, requested_at, process)"
                " DO UPDATE SET state = excluded.state, message = excluded.message,"
                " reported_at = excluded.reported_at",
                (name, requested_at, process, state, message, _now()),
            )
            # Loads of configs no longer pending are of no use to anyone
            db.execute(
                "DELETE FROM config_loads WHERE name = ? AND requested_at <> ? AND requested_at NOT IN"
                " (SELECT requested_at FROM pending_configs WHERE name = ?)",
                (name, requested_at, name),
            )

    def loads(self, name: str, requested_at: str) -> dict[str, tuple[str, str]]:
        """Each server process's (state, message) for the pending config made at `requested_at`."""
        with self._connect() as db:
            rows = db.execute(
                "SELECT process, state, message FROM config_loads WHERE name = ? AND requested_at = ?",
                (name, requested_at),
            ).fetchall()
        return {row[0]: (row[1], row[2]) for row in rows}

    def tags(self, name: str) -> builtins.list[dict[str, str | None]]:
        with self._connect() as db:
            rows = db.execute("SELECT key, value FROM tags WHERE name = ? ORDER BY key", (name,)).fetchall()
        return [{"key": r["key"], "value": r["value"]} for r in rows]

    def patch_tags(self, name: str, add: dict[str, str | None], delete: builtins.list[str]) -> bool:
        """Add or change tags and delete others, in one transaction; False when the endpoint is gone."""
        with self._write() as db:
            if db.execute("SELECT 1 FROM endpoints WHERE name = ?", (name,)).fetchone() is None:
                return False
            db.executemany("DELETE FROM tags WHERE name = ? AND key = ?", [(name, k) for k in delete])
            db.executemany(
                "INSERT INTO tags (name, key, value) VALUES (?, ?, ?)"
                " ON CONFLICT (name, key) DO UPDATE SET value = excluded.value",
                [(name, k, v) for k, v in add.items()],
            )
        return True

    def default(self, role: str) -> str | None:
        with self._connect() as db:
            row = db.execute("SELECT name FROM defaults WHERE role = ?", (role,)).fetchone()
        return None if row is None else str(row["name"])

    def set_default(self, role: str, name: str | None) -> None:
        with self._write() as db:
            if name is None:
                db.execute("DELETE FROM defaults WHERE role = ?", (role,))
            else:
                db.execute(
                    "INSERT INTO defaults (role, name) VALUES (?, ?)"
                    " ON CONFLICT (role) DO UPDATE SET name = excluded.name",
                    (role, name),
                )
            bump_revision(db)
        self._revision = None

    def versions(self, name: str) -> builtins.list[dict[str, object]]:
        with self._connect() as db:
            rows = db.execute(
                "SELECT * FROM endpoint_versions WHERE name = ? ORDER BY version", (name,)
            ).fetchall()
        return [{**dict(r), "options": json.loads(r["options"])} for r in rows]

    @staticmethod
    def _record_version(
        db: Connection, name: str, version: int, kind: str, options: str, description: str, at: str
    ) -> None:
        db.execute(
            "INSERT INTO endpoint_versions VALUES (?, ?, ?, ?, ?, ?)",
            (name, version, kind, options, description, at),
        )
