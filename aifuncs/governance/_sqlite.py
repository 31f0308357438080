"""The governance stores' one way into their SQLite file (the catalog's)."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def transaction(path: Path, schema: str) -> Iterator[sqlite3.Connection]:
    """One transaction on `path` with `schema` in place: committed when the block ends, rolled back if it
    raises; the connection closed either way. Foreign keys are enforced (a deleted principal takes its rows)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(path, timeout=30)
    try:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA foreign_keys=ON")
        db.executescript(schema)
        with db:
            yield db
    finally:
        db.close()
