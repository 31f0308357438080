"""SQLite files in WAL mode, set safely while other connections open the same file."""

from __future__ import annotations

import sqlite3
import time

__all__ = ["use_wal"]


def use_wal(db: sqlite3.Connection, timeout_s: float = 30.0) -> None:
    """Put the file in WAL mode (a setting kept in the file). Switching needs the file to itself, and SQLite
    answers "database is locked" at once, without its busy wait, while another connection is creating the
    same file's tables: wait that out here."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            db.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as error:
            if "locked" not in str(error) or time.monotonic() > deadline:
                raise
            time.sleep(0.005)
