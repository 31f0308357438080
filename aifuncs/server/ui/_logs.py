"""The request log of an endpoint (its inference table), one page per view: filters in the URL, newest first,
keyset-paged by time, details on click, CSV of the same query. A manager of the endpoint (an admin) reads every
row; anyone else with CAN_VIEW only its own rows written since it was made."""

from __future__ import annotations

import csv
import io
import json
import sqlite3
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aifuncs.governance.keys import keyring
from aifuncs.governance.payloads import connect, payload_aad, payload_log
from aifuncs.server.ui._web import Me

__all__ = ["LogFilter", "log_csv", "log_detail", "log_page"]

PAGE = 50
_LIST = (
    "request_id, timestamp_ms, status_code, execution_time_ms, requester, origin, input_tokens, output_tokens,"
    " client_request_id"
)
_STATUS = {"2xx": (0, 399), "4xx": (400, 499), "5xx": (500, 999)}


@dataclass(frozen=True)
class LogFilter:
    """What the URL asks: status class, requester, a text to find in the request or response, and the page's
    end (rows before this time, in ms)."""

    status: str = ""
    requester: str = ""
    q: str = ""
    before: int | None = None

    @classmethod
    def from_query(cls, params: Any) -> LogFilter:
        before = str(params.get("before") or "")
        return cls(
            status=str(params.get("status") or "") if params.get("status") in _STATUS else "",
            requester=str(params.get("requester") or "")[:128],
            q=str(params.get("q") or "")[:200],
            before=int(before) if before.isdigit() and len(before) < 16 else None,
        )

    def query(self, **change: Any) -> dict[str, str]:
        values = {
            "status": self.status,
            "requester": self.requester,
            "q": self.q,
            "before": self.before,
            **change,
        }
        return {k: str(v) for k, v in values.items() if v not in (None, "")}


def _where(me: Me, endpoint: str, f: LogFilter) -> tuple[str, list[Any]]:
    clauses: list[str] = ["endpoint = ?"]
    params: list[Any] = [endpoint]
    if not me.principal.admin and endpoint not in me.catalog.managed():
        clauses.append("requester = ?")
        params.append(me.name)
        if me.principal.created_at is not None:
            clauses.append("timestamp_ms >= ?")
            params.append(int(me.principal.created_at.timestamp() * 1000))
    made = me.catalog.get(endpoint).created_at
    if made is not None and not me.principal.admin:  # an earlier endpoint of this name is another's
        clauses.append("timestamp_ms >= ?")
        params.append(int(made.timestamp() * 1000))
    if f.status:
        low, high = _STATUS[f.status]
        clauses.append("status_code BETWEEN ? AND ?")
        params += [low, high]
    if f.requester:
        clauses.append("requester = ?")
        params.append(f.requester)
    if f.q:  # sealed payloads are bytes and never match: `searchable` says so
        clauses.append("(request_id = ? OR instr(request, ?) > 0 OR instr(response, ?) > 0)")
        params += [f.q, f.q, f.q]
    if f.before is not None:
        clauses.append("timestamp_ms < ?")
        params.append(f.before)
    return " AND ".join(clauses), params


def _db(home: Path) -> sqlite3.Connection | None:
    path = home / "payloads.db"
    payload_log().flush()
    return connect(path) if path.exists() else None


def searchable() -> bool:
    """Whether request and response texts can be searched (not when they are encrypted at rest)."""
    return keyring() is None


def log_page(
    me: Me, endpoint: str, f: LogFilter, limit: int = PAGE
) -> tuple[list[dict[str, Any]], int | None]:
    """One page of rows (without payloads) and the `before` of the next page, None at the end."""
    name = me.catalog.get(endpoint).name  # CAN_VIEW, else "no such endpoint"
    db = _db(me.home)
    if db is None:
        return [], None
    try:
        db.row_factory = sqlite3.Row
        where, params = _where(me, name, f)
        rows = [
            dict(r)
            for r in db.execute(
                f"SELECT {_LIST} FROM payloads WHERE {where} ORDER BY timestamp_ms DESC LIMIT ?",
                [*params, limit + 1],
            )
        ]
    finally:
        db.close()
    for row in rows:
        row["time"] = datetime.fromtimestamp(row["timestamp_ms"] / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S")
    more = len(rows) > limit
    rows = rows[:limit]
    return rows, (rows[-1]["timestamp_ms"] if more and rows else None)


def _opened(row: dict[str, Any]) -> dict[str, Any]:
    ring = keyring()
    for column in ("request", "response"):
        value = row.get(column)
        if isinstance(value, bytes):
            row[column] = (
                ring.open(value, payload_aad(row, column)).decode()
                if ring
                else "(encrypted; no key is configured)"
            )
        if isinstance(row.get(column), str):
            try:
                row[column] = json.dumps(json.loads(row[column]), indent=2, ensure_ascii=False)
            except ValueError:
                pass
    return row


def log_detail(me: Me, endpoint: str, request_id: str) -> dict[str, Any] | None:
    """One row whole (its payloads opened), if the principal may read it."""
    name = me.catalog.get(endpoint).name
    db = _db(me.home)
    if db is None:
        return None
    try:
        db.row_factory = sqlite3.Row
        where, params = _where(me, name, LogFilter())
        found = db.execute(
            f"SELECT * FROM payloads WHERE {where} AND request_id = ? LIMIT 1", [*params, request_id]
        ).fetchone()
    finally:
        db.close()
    return None if found is None else _opened(dict(found))


def log_csv(me: Me, endpoint: str, f: LogFilter, limit: int = 100_000) -> str:
    """The filtered rows as CSV (metadata; payloads stay on the detail view), newest first."""
    rows, _ = log_page(me, endpoint, f, limit)
    out = io.StringIO()
    writer = csv.writer(out)
    fields = ["time", *[c.strip() for c in _LIST.split(",")]]
    writer.writerow(fields)
    for row in rows:
        writer.writerow([_cell(row.get(k)) for k in fields])
    return out.getvalue()


def _cell(value: Any) -> Any:
    """A CSV cell a spreadsheet will not run as a formula."""
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value
