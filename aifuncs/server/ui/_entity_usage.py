"""Usage by served entity: an hourly rollup of the usage log per endpoint, served entity (the one that answered)
and requester, with how many requests a fallback answered (the usage label `fallback_from`). Kept in
`usage.db` beside the log and the other rollups, folded in incrementally by rowid as `runtime/_rollups.py`
folds its own, so the endpoint page's entity chart and the usage page's breakdown read sums, never raw rows.

With AIFUNCS_DATABASE_URL set (usage in the shared database) there is no such rollup yet: `available` is
False and the pages say so.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aifuncs.runtime._rollups import Scope, since_stamp
from aifuncs.runtime._usage import _connect
from aifuncs.storage import shared

__all__ = ["EntityRollup", "EntityHour", "EntitySum"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS usage_entity_rollup_state (name TEXT PRIMARY KEY, last_rowid INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS usage_entity_hourly (
    hour TEXT NOT NULL, endpoint TEXT NOT NULL, served_entity TEXT NOT NULL, requester TEXT NOT NULL,
    requests INTEGER NOT NULL, errors INTEGER NOT NULL, fallbacks INTEGER NOT NULL, rows INTEGER NOT NULL,
    input_tokens INTEGER NOT NULL, output_tokens INTEGER NOT NULL, latency_ms REAL NOT NULL,
    first_ts TEXT NOT NULL,
    PRIMARY KEY (hour, endpoint, served_entity, requester)
);
"""
_STATE = "v1"
_CODE = "coalesce(status_code, CASE WHEN status = 'ok' THEN 200 ELSE 500 END)"
# A label set by a caller is its own text: read only from a JSON object, so a malformed one cannot stop the fold.
_FALLBACK = (
    "CASE WHEN json_valid(coalesce(usage_context, '')) THEN (CASE WHEN json_type(usage_context) = 'object'"
    " AND json_extract(usage_context, '$.fallback_from') IS NOT NULL THEN 1 ELSE 0 END) ELSE 0 END"
)
_FOLD = f"""
    INSERT INTO usage_entity_hourly SELECT substr(ts, 1, 13), endpoint, coalesce(served_entity, endpoint),
        coalesce(requester, ''), count(*), sum(CASE WHEN {_CODE} >= 400 THEN 1 ELSE 0 END), sum({_FALLBACK}),
        coalesce(sum(rows), 0), coalesce(sum(input_tokens), 0), coalesce(sum(output_tokens), 0),
        coalesce(sum(latency_ms), 0), min(ts)
    FROM usage WHERE rowid > ? AND rowid <= ? GROUP BY 1, 2, 3, 4
    ON CONFLICT (hour, endpoint, served_entity, requester) DO UPDATE SET requests = requests + excluded.requests,
        errors = errors + excluded.errors, fallbacks = fallbacks + excluded.fallbacks, rows = rows + excluded.rows,
        input_tokens = input_tokens + excluded.input_tokens, output_tokens = output_tokens + excluded.output_tokens,
        latency_ms = latency_ms + excluded.latency_ms, first_ts = min(first_ts, excluded.first_ts)"""
# The buckets a scope may read (the rule of `Rollups.daily_sums`, at the hour's grain).
_SCOPED = (
    " AND (? = 1 OR (d.requester = ? AND d.first_ts >= ?) OR EXISTS (SELECT 1 FROM managed m"
    " WHERE m.endpoint = d.endpoint AND d.first_ts >= m.since))"
)


@dataclass(frozen=True)
class EntitySum:
    """One served entity's sums over a span: what a breakdown shows and prices."""

    endpoint: str
    served_entity: str
    requests: int
    errors: int
    fallbacks: int
    rows: int
    input_tokens: int
    output_tokens: int
    latency_ms: float


@dataclass(frozen=True)
class EntityHour:
    hour: str  # YYYY-MM-DDTHH, UTC
    served_entity: str
    requests: int
    fallbacks: int


class EntityRollup:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.available = shared(path) is None

    def __repr__(self) -> str:
        return f"EntityRollup({str(self.path)!r})"

    def _db(self) -> sqlite3.Connection:
        db = _connect(self.path)
        db.executescript(_SCHEMA)
        return db

    def refresh(self) -> int:
        """Fold the rows written since the last refresh; how many. One transaction, as the other rollups."""
        if not self.available or not self.path.exists():
            return 0
        db = self._db()
        try:
            db.isolation_level = None
            db.execute("BEGIN IMMEDIATE")
            try:
                found = db.execute(
                    "SELECT last_rowid FROM usage_entity_rollup_state WHERE name = ?", (_STATE,)
                ).fetchone()
                last = int(found[0]) if found else 0
                top = db.execute("SELECT max(rowid) FROM usage").fetchone()[0]
                if top is None or int(top) <= last:
                    db.execute("COMMIT")
                    return 0
                db.execute(_FOLD, (last, int(top)))
                db.execute(
                    "INSERT INTO usage_entity_rollup_state (name, last_rowid) VALUES (?, ?)"
                    " ON CONFLICT (name) DO UPDATE SET last_rowid = excluded.last_rowid",
                    (_STATE, int(top)),
                )
                db.execute("COMMIT")
                return int(top) - last
            except BaseException:
                db.execute("ROLLBACK")
                raise
        finally:
            db.close()

    def _read(self, query: str, parameters: list[Any]) -> list[tuple[Any, ...]]:
        if not self.available or not self.path.exists():
            return []
        db = self._db()
        try:
            return db.execute(query, tuple(parameters)).fetchall()
        finally:
            db.close()

    def sums(self, since_hour: str, scope: Scope, endpoint: str | None = None) -> list[EntitySum]:
        """Hours from `since_hour` that `scope` may read, of `endpoint` (None: all), summed per endpoint and
        served entity in SQL."""
        managed = [(name, since_stamp(at)) for name, at in sorted(scope.endpoints.items())]
        parameters: list[Any] = [p for pair in managed for p in pair]
        query = "WITH managed(endpoint, since) AS (VALUES " + ", ".join(["(?, ?)"] * len(managed)) + ") "
        if not managed:  # VALUES needs a row: one no endpoint has
            query, parameters = "WITH managed(endpoint, since) AS (SELECT NULL, NULL) ", []
        query += (
            "SELECT d.endpoint, d.served_entity, sum(d.requests), sum(d.errors), sum(d.fallbacks), sum(d.rows),"
            " sum(d.input_tokens), sum(d.output_tokens), sum(d.latency_ms) FROM usage_entity_hourly d"
            " WHERE d.hour >= ?" + _SCOPED
        )
        parameters += [since_hour, int(scope.everything), scope.requester, since_stamp(scope.requester_since)]
        if endpoint is not None:
            query += " AND d.endpoint = ?"
            parameters.append(endpoint)
        return [EntitySum(*r) for r in self._read(query + " GROUP BY 1, 2 ORDER BY 1, 2", parameters)]

    def hourly(self, since_hour: str, endpoint: str, since: Any) -> list[EntityHour]:
        """Per hour and served entity of one endpoint: requests and fallbacks, of buckets begun at or after
        `since` (a datetime; None: all)."""
        return [
            EntityHour(*r)
            for r in self._read(
                "SELECT hour, served_entity, sum(requests), sum(fallbacks) FROM usage_entity_hourly"
                " WHERE hour >= ? AND endpoint = ? AND first_ts >= ? GROUP BY 1, 2 ORDER BY 1, 2",
                [since_hour, endpoint, since_stamp(since)],
            )
        ]
