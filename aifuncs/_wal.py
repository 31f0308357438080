"""SQLite files opened by several processes at once: WAL mode and added columns, set safely while other
connections open the same file."""

from __future__ import annotations

import sqlite3
import time

__all__ = ["add_columns", "use_wal"]


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


def add_columns(db: sqlite3.Connection, table: str, columns: dict[str, str]) -> None:
    """Add the columns a table written by an older aifuncs lacks. Two processes opening a new file may both
    find one missing (measured: two Spark workers writing their first usage rows at once); the second to
    add it is told it exists, which is all it wanted."""
    present = {row[1] for row in db.execute(f"PRAGMA table_info({table})")}
    for column, kind in columns.items():
        if column in present:
            continue
        try:
            db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")
        except sqlite3.OperationalError as error:
            if "duplicate column name" not in str(error):
                raise
