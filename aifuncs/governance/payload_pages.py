"""An inference table read a page at a time, newest first, on either backend: the host's `payloads.db`, or with
AIFUNCS_DATABASE_URL set the shared table, every host's rows. The caller (the web UI) says which rows a
principal may read (`PayloadFilter`); this module knows how each backend keeps them.

    rows = page(home / "payloads.db", PayloadFilter("llm", text="refund"), LIST_COLUMNS, limit=51)
    row = one(home / "payloads.db", PayloadFilter("llm"), request_id)   # sealed payloads still sealed

Text is found in a payload stored in clear only: a sealed one is bytes no search can read (and on PostgreSQL
random bytes that must not match by chance). Pages are keyset-paged by time on the index
`payloads_by_time (endpoint, timestamp_ms)` both backends have.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aifuncs.governance.payloads import PayloadRow, connect, loaded
from aifuncs.storage import shared

__all__ = ["LIST_COLUMNS", "PayloadFilter", "one", "page"]

# The columns of a list (no payloads: they stay on the detail view).
LIST_COLUMNS = (
    "request_id", "timestamp_ms", "status_code", "execution_time_ms", "requester", "origin", "input_tokens",
    "output_tokens", "client_request_id",
)  # fmt: skip
_ALL = ", ".join(PayloadRow._fields)


@dataclass(frozen=True)
class PayloadFilter:
    """Rows of `endpoint` that every given condition keeps: written by each of `requesters` (more than one
    name keeps none), at or after `since_ms`, before `before_ms`, with a status code in `status`, and whose
    request id is `text` or whose request or response (in clear) holds it."""

    endpoint: str
    requesters: tuple[str, ...] = ()
    since_ms: int | None = None
    before_ms: int | None = None
    status: tuple[int, int] | None = None
    text: str = ""

    def where(self, on_database: bool) -> tuple[str, list[Any]]:
        clauses: list[str] = ["endpoint = ?"]
        params: list[Any] = [self.endpoint]
        for name in self.requesters:
            clauses.append("requester = ?")
            params.append(name)
        if self.since_ms is not None:
            clauses.append("timestamp_ms >= ?")
            params.append(self.since_ms)
        if self.before_ms is not None:
            clauses.append("timestamp_ms < ?")
            params.append(self.before_ms)
        if self.status is not None:
            clauses.append("status_code BETWEEN ? AND ?")
            params += list(self.status)
        if self.text:
            if on_database:  # payloads are bytes there, `sealed` saying which (1: request, 2: response)
                clauses.append(
                    "(request_id = ? OR ((sealed & 1) = 0 AND position(? IN request) > 0)"
                    " OR ((sealed & 2) = 0 AND position(? IN response) > 0))"
                )
                needle: Any = self.text.encode()
            else:  # a sealed payload is a BLOB
                clauses.append(
                    "(request_id = ? OR (typeof(request) = 'text' AND instr(request, ?) > 0)"
                    " OR (typeof(response) = 'text' AND instr(response, ?) > 0))"
                )
                needle = self.text
            params += [self.text, needle, needle]
        return " AND ".join(clauses), params


def _select(path: Path, columns: str, f: PayloadFilter, tail: str, extra: list[Any]) -> list[dict[str, Any]]:
    database = shared(path)
    if database is not None:
        where, params = f.where(on_database=True)
        found = database.reader().execute(
            f"SELECT {columns} FROM payloads WHERE {where} {tail}", [*params, *extra]
        )
        names = [c.strip() for c in columns.split(",")]
        return [dict(zip(names, r, strict=True)) for r in found.fetchall()]
    if not path.exists():
        return []
    db = connect(path)
    try:
        db.row_factory = sqlite3.Row
        where, params = f.where(on_database=False)
        return [
            dict(r)
            for r in db.execute(f"SELECT {columns} FROM payloads WHERE {where} {tail}", [*params, *extra])
        ]
    finally:
        db.close()


def page(
    path: Path, f: PayloadFilter, columns: tuple[str, ...] = LIST_COLUMNS, limit: int = 50
) -> list[dict[str, Any]]:
    """Up to `limit` rows `f` keeps, newest first: `columns` of each (names of the table's, never a caller's)."""
    unknown = set(columns) - set(PayloadRow._fields)
    if unknown:
        raise ValueError(f"Not columns of the inference table: {sorted(unknown)}")
    return _select(path, ", ".join(columns), f, "ORDER BY timestamp_ms DESC LIMIT ?", [limit])


def one(path: Path, f: PayloadFilter, request_id: str) -> dict[str, Any] | None:
    """The row of `request_id`, if `f` keeps it: every column, its payloads as the SQLite file keeps them (text,
    or the sealed bytes)."""
    on_database = shared(path) is not None
    columns = f"{_ALL}, sealed" if on_database else _ALL
    found = _select(path, columns, f, "AND request_id = ? LIMIT 1", [request_id])
    if not found:
        return None
    return loaded(found[0]) if on_database else found[0]
