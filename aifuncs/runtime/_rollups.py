"""Hourly and daily rollups of the usage log, kept in `usage.db` beside it and brought up to date
incrementally: each refresh folds in only the rows written since the last one (by rowid), in one
transaction, whichever process wrote them (the usage writer, a replayed journal, another worker). With
AIFUNCS_DATABASE_URL set, the rollups live beside the shared log in the database (migration 0003) and fold by
`seq`, the order rows were committed in: every host's usage in one set of figures.

    rollups = Rollups(home / "usage.db")
    rollups.refresh()                      # milliseconds once caught up; the first pass reads the log once
    rollups.hourly(since, endpoints)       # per hour, endpoint and status class: charts
    rollups.daily(since_day)               # per day, endpoint and requester
    rollups.daily_sums(since_day, "requester", scope)   # summed in SQL by a key and endpoint: breakdowns

Pages and charts read these, never the raw rows: with a million usage rows a page still answers in
milliseconds. Hours and days are UTC (the log's timestamps are). Latency percentiles come from a histogram
of log-spaced buckets (`BUCKETS_PER_DOUBLING` per doubling: within ~9% of the exact value). Each bucket
keeps the time of its first row, so a reader can tell a bucket that began before an endpoint or a principal
of its name was made (an earlier incarnation's rows: `governance/visibility.py`).
"""

from __future__ import annotations

import math
import sqlite3
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from aifuncs.runtime._usage import _connect
from aifuncs.storage import Postgres, shared

__all__ = ["BUCKETS_PER_DOUBLING", "DailySum", "Rollups", "Scope", "percentile", "since_stamp"]

BUCKETS_PER_DOUBLING = 4
_STATE = "v1"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS usage_rollup_state (name TEXT PRIMARY KEY, last_rowid INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS usage_hourly (
    hour TEXT NOT NULL, endpoint TEXT NOT NULL, status_class TEXT NOT NULL,
    requests INTEGER NOT NULL, rows INTEGER NOT NULL, input_tokens INTEGER NOT NULL,
    output_tokens INTEGER NOT NULL, latency_ms REAL NOT NULL, first_ts TEXT NOT NULL,
    PRIMARY KEY (hour, endpoint, status_class)
);
CREATE TABLE IF NOT EXISTS usage_latency_hourly (
    hour TEXT NOT NULL, endpoint TEXT NOT NULL, bucket INTEGER NOT NULL, requests INTEGER NOT NULL,
    PRIMARY KEY (hour, endpoint, bucket)
);
CREATE TABLE IF NOT EXISTS usage_daily (
    day TEXT NOT NULL, endpoint TEXT NOT NULL, requester TEXT NOT NULL, requests INTEGER NOT NULL,
    errors INTEGER NOT NULL, rows INTEGER NOT NULL, input_tokens INTEGER NOT NULL,
    output_tokens INTEGER NOT NULL, latency_ms REAL NOT NULL, first_ts TEXT NOT NULL,
    PRIMARY KEY (day, endpoint, requester)
);
"""
# The HTTP status of a row, as the metrics route reads it: its code, else 200 when it answered, else 500.
_CODE = "coalesce(status_code, CASE WHEN status = 'ok' THEN 200 ELSE 500 END)"
_CLASS = f"CASE WHEN {_CODE} < 400 THEN '2xx' WHEN {_CODE} < 500 THEN '4xx' ELSE '5xx' END"
_BUCKET = f"CAST(floor(log2(max(latency_ms, 0.125)) * {BUCKETS_PER_DOUBLING}) AS INTEGER)"
# The same on PostgreSQL: its log of a numeric is exact where SQLite's log2 of a double is (powers of two).
_BUCKET_PG = (
    f"CAST(floor(log(2.0, greatest(latency_ms, 0.125)::numeric) * {BUCKETS_PER_DOUBLING}) AS INTEGER)"
)
_FOLD = {
    "usage_hourly": f"""
        INSERT INTO usage_hourly SELECT substr(ts, 1, 13), endpoint, {_CLASS}, count(*), coalesce(sum(rows), 0),
            coalesce(sum(input_tokens), 0), coalesce(sum(output_tokens), 0), coalesce(sum(latency_ms), 0), min(ts)
        FROM usage WHERE rowid > ? AND rowid <= ? GROUP BY 1, 2, 3
        ON CONFLICT (hour, endpoint, status_class) DO UPDATE SET requests = requests + excluded.requests,
            rows = rows + excluded.rows, input_tokens = input_tokens + excluded.input_tokens,
            output_tokens = output_tokens + excluded.output_tokens, latency_ms = latency_ms + excluded.latency_ms,
            first_ts = min(first_ts, excluded.first_ts)""",
    "usage_latency_hourly": f"""
        INSERT INTO usage_latency_hourly SELECT substr(ts, 1, 13), endpoint, {_BUCKET}, count(*)
        FROM usage WHERE rowid > ? AND rowid <= ? AND latency_ms IS NOT NULL GROUP BY 1, 2, 3
        ON CONFLICT (hour, endpoint, bucket) DO UPDATE SET requests = requests + excluded.requests""",
    "usage_daily": f"""
        INSERT INTO usage_daily SELECT substr(ts, 1, 10), endpoint, coalesce(requester, ''), count(*),
            sum(CASE WHEN {_CODE} >= 400 THEN 1 ELSE 0 END), coalesce(sum(rows), 0), coalesce(sum(input_tokens), 0),
            coalesce(sum(output_tokens), 0), coalesce(sum(latency_ms), 0), min(ts)
        FROM usage WHERE rowid > ? AND rowid <= ? GROUP BY 1, 2, 3
        ON CONFLICT (day, endpoint, requester) DO UPDATE SET requests = requests + excluded.requests,
            errors = errors + excluded.errors, rows = rows + excluded.rows,
            input_tokens = input_tokens + excluded.input_tokens, output_tokens = output_tokens + excluded.output_tokens,
            latency_ms = latency_ms + excluded.latency_ms, first_ts = min(first_ts, excluded.first_ts)""",
}
# PostgreSQL: rows by `seq` (commit order), its own names for two-argument min and log2, target columns named.
_FOLD_PG = {
    name: statement.replace("rowid", "seq")
    .replace(_BUCKET, _BUCKET_PG)
    .replace("min(first_ts, excluded.first_ts)", f"least({name}.first_ts, excluded.first_ts)")
    .replace(" = requests + ", f" = {name}.requests + ")
    .replace(" = errors + ", f" = {name}.errors + ")
    .replace(" = rows + ", f" = {name}.rows + ")
    .replace(" = input_tokens + ", f" = {name}.input_tokens + ")
    .replace(" = output_tokens + ", f" = {name}.output_tokens + ")
    .replace(" = latency_ms + ", f" = {name}.latency_ms + ")
    for name, statement in _FOLD.items()
}


@dataclass(frozen=True)
class Hourly:
    hour: str  # YYYY-MM-DDTHH, UTC
    endpoint: str
    status_class: str  # 2xx | 4xx | 5xx
    requests: int
    rows: int
    input_tokens: int
    output_tokens: int
    latency_ms: float  # the sum
    first_ts: str


@dataclass(frozen=True)
class Daily:
    day: str  # YYYY-MM-DD, UTC
    endpoint: str
    requester: str
    requests: int
    errors: int
    rows: int
    input_tokens: int
    output_tokens: int
    latency_ms: float
    first_ts: str


@dataclass(frozen=True)
class DailySum:
    """Daily rows summed per (key, endpoint): what a breakdown prices (an endpoint's prices are its own)."""

    key: str
    endpoint: str
    requests: int
    errors: int
    rows: int
    input_tokens: int
    output_tokens: int
    latency_ms: float


@dataclass(frozen=True)
class Scope:
    """Which buckets a reader may sum: all of them (`everything`), or those of `requester` begun since
    `requester_since`, and those of each endpoint in `endpoints` begun since its time (None: since ever)."""

    everything: bool = False
    requester: str | None = None
    requester_since: datetime | None = None
    endpoints: Mapping[str, datetime | None] = field(default_factory=dict)


# The key a breakdown sums by: a column of usage_daily, never a caller's text.
_KEYS = {"endpoint": "endpoint", "requester": "requester", "day": "day"}


def since_stamp(at: datetime | None) -> str:
    """`at` as the log writes times (UTC, milliseconds), rounded up to the next millisecond: a log time (whole
    milliseconds) compares with it, as text, as the row's instant compares with `at`. None: before any row."""
    if at is None:
        return ""
    at = at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)
    if at.microsecond % 1000:
        at += timedelta(microseconds=1000 - at.microsecond % 1000)
    return at.isoformat(timespec="milliseconds")


def percentile(histogram: dict[int, int], fraction: float) -> float | None:
    """The latency (ms) below which `fraction` of the requests of a bucket histogram fall (its bucket's middle)."""
    total = sum(histogram.values())
    if not total:
        return None
    seen = 0
    for bucket in sorted(histogram):
        seen += histogram[bucket]
        if seen >= fraction * total:
            return float(2 ** ((bucket + 0.5) / BUCKETS_PER_DOUBLING))
    return None  # pragma: no cover (the loop reaches total)


class Rollups:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.database: Postgres | None = shared(path)

    def __repr__(self) -> str:
        return f"Rollups({str(self.path)!r})"

    def _db(self) -> sqlite3.Connection:
        db = _connect(self.path)
        db.executescript(_SCHEMA)
        return db

    def refresh(self) -> int:
        """Fold the rows written since the last refresh into the rollups; how many. One transaction: another
        process refreshing at the same time waits, then finds nothing left to fold."""
        if self.database is not None:
            return self._refresh_shared(self.database)
        if not self.path.exists():
            return 0
        db = self._db()
        try:
            db.isolation_level = None
            db.execute("BEGIN IMMEDIATE")
            try:
                found = db.execute(
                    "SELECT last_rowid FROM usage_rollup_state WHERE name = ?", (_STATE,)
                ).fetchone()
                last = int(found[0]) if found else 0
                top = db.execute("SELECT max(rowid) FROM usage").fetchone()[0]
                if top is None or int(top) <= last:
                    db.execute("COMMIT")
                    return 0
                for statement in _FOLD.values():
                    db.execute(statement, (last, int(top)))
                db.execute(
                    "INSERT INTO usage_rollup_state (name, last_rowid) VALUES (?, ?)"
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

    def _refresh_shared(self, database: Postgres) -> int:
        # The log's writers' turn: no row commits with a lower seq while the fold runs, so none is skipped.
        with database.transaction("usage", immediate=True) as db:
            found = db.execute(
                "SELECT last_rowid FROM usage_rollup_state WHERE name = ?", (_STATE,)
            ).fetchone()
            last = int(found[0]) if found else 0
            top = db.execute("SELECT max(seq) FROM usage").fetchone()[0]
            if top is None or int(top) <= last:
                return 0
            for statement in _FOLD_PG.values():
                db.execute(statement, (last, int(top)))
            db.execute(
                "INSERT INTO usage_rollup_state (name, last_rowid) VALUES (?, ?)"
                " ON CONFLICT (name) DO UPDATE SET last_rowid = excluded.last_rowid",
                (_STATE, int(top)),
            )
            return int(top) - last

    def _read(self, query: str, parameters: Iterable[Any]) -> list[tuple[Any, ...]]:
        if self.database is not None:
            return [tuple(r) for r in self.database.reader().execute(query, tuple(parameters)).fetchall()]
        if not self.path.exists():
            return []
        db = self._db()
        try:
            return db.execute(query, tuple(parameters)).fetchall()
        finally:
            db.close()

    def hourly(self, since_hour: str, endpoints: Iterable[str] | None = None) -> list[Hourly]:
        """Hours from `since_hour` (YYYY-MM-DDTHH), of `endpoints` (None: all)."""
        names = None if endpoints is None else sorted(set(endpoints))
        if names == []:
            return []
        query = "SELECT * FROM usage_hourly WHERE hour >= ?"
        if names is not None:
            query += f" AND endpoint IN ({', '.join('?' * len(names))})"
        return [Hourly(*r) for r in self._read(query + " ORDER BY hour", [since_hour, *(names or [])])]

    def latency(self, since_hour: str, endpoints: Iterable[str]) -> dict[tuple[str, str], dict[int, int]]:
        """Per (hour, endpoint): the latency histogram (bucket -> requests)."""
        names = sorted(set(endpoints))
        if not names:
            return {}
        rows = self._read(
            f"SELECT hour, endpoint, bucket, requests FROM usage_latency_hourly WHERE hour >= ?"
            f" AND endpoint IN ({', '.join('?' * len(names))})",
            [since_hour, *names],
        )
        found: dict[tuple[str, str], dict[int, int]] = {}
        for hour, endpoint, bucket, requests in rows:
            found.setdefault((hour, endpoint), {})[int(bucket)] = int(requests)
        return found

    def daily(self, since_day: str) -> list[Daily]:
        return [
            Daily(*r)
            for r in self._read("SELECT * FROM usage_daily WHERE day >= ? ORDER BY day", [since_day])
        ]

    def daily_sums(
        self, since_day: str, key: str, scope: Scope, endpoint: str | None = None
    ) -> list[DailySum]:
        """Days from `since_day` (YYYY-MM-DD) that `scope` may read, of `endpoint` (None: all), summed per
        `key` ("endpoint", "requester" or "day") and endpoint, in SQL: a page prices a few thousand sums, not
        tens of thousands of daily rows."""
        column = _KEYS[key]
        managed = [(name, since_stamp(at)) for name, at in sorted(scope.endpoints.items())]
        parameters: list[Any] = [p for pair in managed for p in pair]
        query = "WITH managed(endpoint, since) AS (VALUES " + ", ".join(["(?, ?)"] * len(managed)) + ") "
        if not managed:  # VALUES needs a row: one no endpoint has
            query, parameters = "WITH managed(endpoint, since) AS (SELECT NULL, NULL) ", []
        query += (
            f"SELECT d.{column}, d.endpoint, sum(d.requests), sum(d.errors), sum(d.rows), sum(d.input_tokens),"
            " sum(d.output_tokens), sum(d.latency_ms) FROM usage_daily d WHERE d.day >= ?"
            " AND (? = 1 OR (d.requester = ? AND d.first_ts >= ?) OR EXISTS (SELECT 1 FROM managed m"
            " WHERE m.endpoint = d.endpoint AND d.first_ts >= m.since))"
        )
        parameters += [
            since_day,
            int(scope.everything),
            scope.requester,
            since_stamp(scope.requester_since),
        ]
        if endpoint is not None:
            query += " AND d.endpoint = ?"
            parameters.append(endpoint)
        return [DailySum(*r) for r in self._read(query + " GROUP BY 1, 2", parameters)]


def bucket_of(latency_ms: float) -> int:
    """The histogram bucket of a latency (as the rollup computes it in SQL)."""
    return math.floor(math.log2(max(latency_ms, 0.125)) * BUCKETS_PER_DOUBLING)
