"""The catalog's revision: one counter of governance changes, raised inside the transaction of each (endpoints,
gateway settings, permissions, defaults, principals and memberships). Whatever a process keeps of a binding keys
on it, so a change holds for open connections and running servers within a second."""

from __future__ import annotations

from aifuncs.storage import Connection

__all__ = ["SCHEMA", "bump"]

SCHEMA = """
CREATE TABLE IF NOT EXISTS revision (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    value INTEGER NOT NULL
);
"""


def bump(db: Connection) -> None:
    """Count one governance change, inside the transaction that makes it."""
    db.execute(
        "INSERT INTO revision (id, value) VALUES (1, 1) ON CONFLICT (id) DO UPDATE SET value = revision.value + 1"
    )
