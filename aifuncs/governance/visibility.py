"""Who may read which logged rows (usage, inference tables): the one rule every reader applies.

A principal reads its own requests and every request of the endpoints it manages; an admin reads all. A name
is not an identity: an endpoint deleted and made again under its name, or a user deleted and made again, is
someone else, so each reads only rows written since it was made (its creation time is its incarnation).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from aifuncs.governance.principals import Principal

__all__ = ["own_since", "readable_rows"]

Row = dict[str, Any]


def readable_rows(
    rows: Iterable[Row],
    principal: Principal,
    managed: Mapping[str, datetime | None],
    written_at: Callable[[Row], datetime],
) -> list[Row]:
    """The rows among `rows` that `principal` may read. `managed`: the endpoints it manages, each with the time
    it was made; `written_at`: when a row was written."""
    if principal.admin:
        return list(rows)
    since = principal.created_at
    found = []
    for row in rows:
        at = written_at(row)
        if row.get("requester") == principal.name and (since is None or at >= since):
            found.append(row)
            continue
        endpoint = row.get("endpoint")
        if isinstance(endpoint, str) and endpoint in managed:
            made = managed[endpoint]
            if made is None or at >= made:
                found.append(row)
    return found


def own_since(principal: Principal, written_at: datetime) -> bool:
    """Whether a row kept under `principal`'s name (an audit entry it made, a run it started) is this principal's,
    not a deleted predecessor's of the same name: written since it was made. A naive time is UTC."""
    since = principal.created_at
    if since is None:
        return True
    if written_at.tzinfo is None:
        written_at = written_at.replace(tzinfo=UTC)
    return written_at >= since
