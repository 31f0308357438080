"""The audit log: every change to principals, tokens, permissions, endpoints and their limits, with who made it.

Append-only and hash-chained: each entry's hash covers its own fields and the previous entry's hash, so an
entry changed, removed or reordered breaks the chain from there on (`verify` finds where). SQLite triggers
refuse UPDATE and DELETE on the table; the chain is what shows tampering by anyone who edits the file
directly. Entries are appended under `BEGIN IMMEDIATE`, so processes writing at once still form one chain.
An entry is written right after the change it records. The chain shows entries changed or removed from
the middle; entries cut from the end leave no gap, so keep the latest hash elsewhere (`aifuncs audit
verify` prints it) to notice that too. Secrets never reach it: a token appears by its id and display
prefix only.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aifuncs.governance._sqlite import transaction, write_first

__all__ = ["AuditEntry", "AuditLog"]

_GENESIS = b"\x00" * 32

_SCHEMA = """
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY,
    ts TEXT NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    target TEXT NOT NULL,
    details TEXT NOT NULL,
    prev_hash BLOB NOT NULL,
    hash BLOB NOT NULL
);
CREATE TRIGGER IF NOT EXISTS audit_no_update BEFORE UPDATE ON audit
    BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
CREATE TRIGGER IF NOT EXISTS audit_no_delete BEFORE DELETE ON audit
    BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
"""


@dataclass(frozen=True)
class AuditEntry:
    id: int
    ts: str
    actor: str
    action: str  # e.g. "users.create", "permissions.update", "tokens.revoke"
    target: str  # what was changed: a principal, an endpoint, "token 12"
    details: dict[str, Any]
    hash: str  # hex


def _digest(prev: bytes, entry_id: int, ts: str, actor: str, action: str, target: str, details: str) -> bytes:
    body = json.dumps([entry_id, ts, actor, action, target, details], separators=(",", ":")).encode()
    return hashlib.sha256(prev + body).digest()


class AuditLog:
    """The audit table in the catalog's SQLite file."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __repr__(self) -> str:
        return f"AuditLog({str(self.path)!r})"

    def record(self, actor: str, action: str, target: str, details: dict[str, Any] | None = None) -> None:
        text = json.dumps(details or {}, sort_keys=True, default=str)
        with transaction(self.path, _SCHEMA) as db:
            write_first(db)  # one chain, whoever writes at once
            row = db.execute("SELECT id, hash FROM audit ORDER BY id DESC LIMIT 1").fetchone()
            entry_id, prev = (1, _GENESIS) if row is None else (row[0] + 1, bytes(row[1]))
            ts = datetime.now(UTC).isoformat(timespec="milliseconds")
            digest = _digest(prev, entry_id, ts, actor, action, target, text)
            db.execute(
                "INSERT INTO audit (id, ts, actor, action, target, details, prev_hash, hash)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (entry_id, ts, actor, action, target, text, prev, digest),
            )

    def entries(self, actor: str | None = None) -> list[AuditEntry]:
        """Entries in order; only `actor`'s when given."""
        with transaction(self.path, _SCHEMA) as db:
            rows = db.execute(
                "SELECT id, ts, actor, action, target, details, hash FROM audit"
                " WHERE ? IS NULL OR actor = ? ORDER BY id",
                (actor, actor),
            ).fetchall()
        return [AuditEntry(r[0], r[1], r[2], r[3], r[4], json.loads(r[5]), bytes(r[6]).hex()) for r in rows]

    def verify(self) -> int | None:
        """The id of the first entry whose hash does not follow from the chain before it; None when intact."""
        with transaction(self.path, _SCHEMA) as db:
            rows = db.execute(
                "SELECT id, ts, actor, action, target, details, prev_hash, hash FROM audit ORDER BY id"
            ).fetchall()
        prev, expected_id = _GENESIS, 1
        for entry_id, ts, actor, action, target, details, prev_hash, digest in rows:
            if entry_id != expected_id or bytes(prev_hash) != prev:
                return int(entry_id)
            if _digest(prev, entry_id, ts, actor, action, target, details) != bytes(digest):
                return int(entry_id)
            prev, expected_id = bytes(digest), entry_id + 1
        return None
