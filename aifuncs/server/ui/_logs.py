"""The request log of an endpoint (its inference table), one page per view: filters in the URL, newest first,
keyset-paged by time, details on click, CSV of the same query. A manager of the endpoint (an admin) reads every
row; anyone else with CAN_VIEW only its own rows written since it was made. Rows are read through the payload
store (`governance/payload_pages.py`): the host's file, or with AIFUNCS_DATABASE_URL set every host's rows."""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aifuncs.governance.keys import keyring
from aifuncs.governance.payload_pages import LIST_COLUMNS, PayloadFilter, one, page
from aifuncs.governance.payloads import payload_aad, payload_log
from aifuncs.server.ui._web import Me

__all__ = ["LogFilter", "log_csv", "log_detail", "log_page"]

PAGE = 50
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


def _ms(at: datetime | None) -> int | None:
    return None if at is None else int(at.timestamp() * 1000)


def _visible(me: Me, endpoint: str, f: LogFilter) -> PayloadFilter:
    """The rows of `endpoint` the URL asks for, of those the principal may read."""
    requesters: list[str] = [f.requester] if f.requester else []
    since: list[int] = []
    if not me.principal.admin:
        if endpoint not in me.catalog.managed():  # its own rows, since it was made
            requesters.append(me.name)
            since.append(_ms(me.principal.created_at) or 0)
        # an earlier endpoint of this name is another's
        since.append(_ms(me.catalog.get(endpoint).created_at) or 0)
    return PayloadFilter(
        endpoint,
        requesters=tuple(dict.fromkeys(requesters)),
        since_ms=max(since) if since else None,
        before_ms=f.before,
        status=_STATUS[f.status] if f.status else None,
        text=f.q,  # sealed payloads are bytes and never match: `searchable` says so
    )


def _table(home: Path) -> Path:
    payload_log().flush()  # this process's rows first
    return home / "payloads.db"


def searchable() -> bool:
    """Whether request and response texts can be searched (not when they are encrypted at rest)."""
    return keyring() is None


def log_page(
    me: Me, endpoint: str, f: LogFilter, limit: int = PAGE
) -> tuple[list[dict[str, Any]], int | None]:
    """One page of rows (without payloads) and the `before` of the next page, None at the end."""
    name = me.catalog.get(endpoint).name  # CAN_VIEW, else "no such endpoint"
    rows = page(_table(me.home), _visible(me, name, f), LIST_COLUMNS, limit + 1)
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
    found = one(_table(me.home), _visible(me, name, LogFilter()), request_id)
    return None if found is None else _opened(found)


def log_csv(me: Me, endpoint: str, f: LogFilter, limit: int = 100_000) -> str:
    """The filtered rows as CSV (metadata; payloads stay on the detail view), newest first."""
    rows, _ = log_page(me, endpoint, f, limit)
    out = io.StringIO()
    writer = csv.writer(out)
    fields = ["time", *LIST_COLUMNS]
    writer.writerow(fields)
    for row in rows:
        writer.writerow([_cell(row.get(k)) for k in fields])
    return out.getvalue()


def _cell(value: Any) -> Any:
    """A CSV cell a spreadsheet will not run as a formula."""
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value
