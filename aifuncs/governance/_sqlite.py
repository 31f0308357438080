"""The governance stores' one way into their SQLite file (the catalog's), or into the shared database that
holds its tables when AIFUNCS_DATABASE_URL is set (aifuncs/storage)."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator
from pathlib import Path

from aifuncs._fork import ProcessLocal
from aifuncs._home import private_file
from aifuncs._wal import use_wal
from aifuncs.storage import Connection, PgConnection, shared


@contextlib.contextmanager
def transaction(path: Path, schema: str) -> Iterator[Connection]:
    """One transaction on `path` with `schema` in place: committed when the block ends, rolled back if it
    raises; the connection closed either way. Foreign keys are enforced (a deleted principal takes its rows).
    On the shared database the schema is its migrations', and writers of the file's tables take turns from
    their first write (write_first: from the start)."""
    database = shared(path)
    if database is not None:
        with database.transaction(path.stem) as conn:
            yield conn
        return
    db = sqlite3.connect(private_file(path), timeout=30)
    try:
        db.execute("PRAGMA foreign_keys=ON")
        # WAL and the tables are kept in the file: set up once per file this process sees (~0.2 ms a time)
        stat = path.stat()
        key = (str(path), stat.st_dev, stat.st_ino, schema)
        if key not in _prepared:
            use_wal(db)
            db.executescript(schema)
            _prepared.add(key)
        with db:
            yield db
    finally:
        db.close()


_prepared: set[tuple[str, int, int, str]] = set()


_readers = ProcessLocal()  # per thread and process: a read on the hot path (the policy check) opens nothing


def reader(path: Path, schema: str) -> Connection:
    """A kept connection for reads (autocommit: each read sees what others committed), the schema in place."""
    database = shared(path)
    if database is not None:
        return database.reader()
    kept: dict[tuple[str, str], tuple[int, sqlite3.Connection]] = _readers.values.__dict__.setdefault(
        "connections", {}
    )
    found = kept.get((str(path), schema))
    try:
        inode = path.stat().st_ino
    except FileNotFoundError:
        inode = -1
    if found is not None and found[0] == inode:  # the same file still (not removed and made anew)
        return found[1]
    if found is not None:
        found[1].close()
    with transaction(path, schema):
        pass  # the file and its tables, before the first read
    db = sqlite3.connect(path, timeout=30, isolation_level=None)
    kept[(str(path), schema)] = (path.stat().st_ino, db)
    return db


def write_first(db: Connection) -> None:
    """Take the file's write lock now, inside a transaction that reads before it writes (BEGIN IMMEDIATE): no
    other writer in between; on the shared database, the store's writers' turn."""
    if isinstance(db, sqlite3.Connection):
        db.execute("BEGIN IMMEDIATE")
    elif isinstance(db, PgConnection):
        db.take_turn()


def has_table(db: Connection, name: str) -> bool:
    """Whether the file has made table `name` yet (the shared database's migrations made them all)."""
    if isinstance(db, PgConnection):
        return db.execute("SELECT to_regclass(?) IS NOT NULL", (name,)).fetchone()[0] is True
    return (
        db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,)).fetchone()
        is not None
    )
