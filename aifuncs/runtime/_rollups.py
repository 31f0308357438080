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
    rollups.entity_sums(since_day, scope)                 # per endpoint and the served entity that answered
    rollups.entity_hourly(since_hour, endpoint, since)    # per hour and served entity: charts

Pages and charts read these, never the raw rows: with a million usage rows a page still answers in
milliseconds. Hours and days are UTC (the log's timestamps are). Latency percentiles come from a histogram
of log-spaced buckets (`BUCKETS_PER_DOUBLING` per doubling: within ~9% of the exact value). Each bucket
keeps the time of its first row, so a reader can tell a bucket that began before an endpoint or a principal
of its name was made (an earlier incarnation's rows: `governance/visibility.py`).

Each set of tables keeps its own place in the log (`_SETS`): a set added later (usage by served entity, with
how many requests a fallback answered: the usage label `fallback_from`) folds the whole log on its first
refresh, then only new rows, as the others.
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

__all__ = [
    "BUCKETS_PER_DOUBLING",
    "DailySum",
    "EntityHour",
    "EntitySum",
    "Rollups",
    "Scope",
    "percentile",
    "since_stamp",
]

BUCKETS_PER_DOUBLING = 4
# Each set of tables and its place in the log (its name in usage_rollup_state): a set starts from the log's
# first row, whenever it was added.
_SETS = {
    "v1": ("usage_hourly", "usage_latency_hourly", "usage_daily"),
    "entities_v1": ("usage_entity_daily", "usage_entity_hourly"),
}

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
CREATE TABLE IF NOT EXISTS usage_entity_daily (
    day TEXT NOT NULL, endpoint TEXT NOT NULL, served_entity TEXT NOT NULL, requester TEXT NOT NULL,
    requests INTEGER NOT NULL, errors INTEGER NOT NULL, fallbacks INTEGER NOT NULL, rows INTEGER NOT NULL,
    input_tokens INTEGER NOT NULL, output_tokens INTEGER NOT NULL, latency_ms REAL NOT NULL,
    first_ts TEXT NOT NULL,
    PRIMARY KEY (day, endpoint, served_entity, requester)
);
CREATE TABLE IF NOT EXISTS usage_entity_hourly (
    hour TEXT NOT NULL, endpoint TEXT NOT NULL, served_entity TEXT NOT NULL,
    requests INTEGER NOT NULL, fallbacks INTEGER NOT NULL, first_ts TEXT NOT NULL,
    PRIMARY KEY (hour, endpoint, served_entity)
);
"""
# The web UI's own entity rollup of earlier versions (its table of another shape): the entity set of tables here
# folds the log again from its first row.
_RETIRED = "DROP TABLE IF EXISTS usage_entity_hourly; DROP TABLE IF EXISTS usage_entity_rollup_state;"
# The HTTP status of a row, as the metrics route reads it: its code, else 200 when it answered, else 500.
_CODE = "coalesce(status_code, CASE WHEN status = 'ok' THEN 200 ELSE 500 END)"
_CLASS = f"CASE WHEN {_CODE} < 400 THEN '2xx' WHEN {_CODE} < 500 THEN '4xx' ELSE '5xx' END"
_BUCKET = f"CAST(floor(log2(max(latency_ms, 0.125)) * {BUCKETS_PER_DOUBLING}) AS INTEGER)"
# The same on PostgreSQL: its log of a numeric is exact where SQLite's log2 of a double is (powers of two).
_BUCKET_PG = (
    f"CAST(floor(log(2.0, greatest(latency_ms, 0.125)::numeric) * {BUCKETS_PER_DOUBLING}) AS INTEGER)"
)
# Whether a fallback answered the row: its usage label `fallback_from`, read only from a JSON object (a label is
# a caller's text: a malformed one must not stop the fold). The LIKE spares the JSON parse of every other row.
_FALLBACK = (
    "CASE WHEN usage_context LIKE '%\"fallback_from\"%' THEN (CASE WHEN json_valid(usage_context) THEN"
    " (CASE WHEN json_type(usage_context) = 'object' AND json_extract(usage_context, '$.fallback_from')"
    " IS NOT NULL THEN 1 ELSE 0 END) ELSE 0 END) ELSE 0 END"
)
# The same rule on PostgreSQL (migration 0005's function).
_FALLBACK_PG = (
    "CASE WHEN usage_context LIKE '%\"fallback_from\"%'"
    " THEN aifuncs_labelled(usage_context, 'fallback_from') ELSE 0 END"
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
    # Per served entity (a row without one is an endpoint of one model: its entity is the endpoint). By day and
    # requester for breakdowns; by hour, every requester's, for an endpoint's charts.
    "usage_entity_daily": f"""
        INSERT INTO usage_entity_daily SELECT substr(ts, 1, 10), endpoint, coalesce(served_entity, endpoint),
            coalesce(requester, ''), count(*), sum(CASE WHEN {_CODE} >= 400 THEN 1 ELSE 0 END), sum({_FALLBACK}),
            coalesce(sum(rows), 0), coalesce(sum(input_tokens), 0), coalesce(sum(output_tokens), 0),
            coalesce(sum(latency_ms), 0), min(ts)
        FROM usage WHERE rowid > ? AND rowid <= ? GROUP BY 1, 2, 3, 4
        ON CONFLICT (day, endpoint, served_entity, requester) DO UPDATE SET requests = requests + excluded.requests,
            errors = errors + excluded.errors, fallbacks = fallbacks + excluded.fallbacks, rows = rows + excluded.rows,
            input_tokens = input_tokens + excluded.input_tokens, output_tokens = output_tokens + excluded.output_tokens,
            latency_ms = latency_ms + excluded.latency_ms, first_ts = min(first_ts, excluded.first_ts)""",
    "usage_entity_hourly": f"""
        INSERT INTO usage_entity_hourly SELECT substr(ts, 1, 13), endpoint, coalesce(served_entity, endpoint),
            count(*), sum({_FALLBACK}), min(ts)
        FROM usage WHERE rowid > ? AND rowid <= ? GROUP BY 1, 2, 3
        ON CONFLICT (hour, endpoint, served_entity) DO UPDATE SET requests = requests + excluded.requests,
            fallbacks = fallbacks + excluded.fallbacks, first_ts = min(first_ts, excluded.first_ts)""",
}
# PostgreSQL: rows by `seq` (commit order), its own names for two-argument min and log2, target columns named.
_FOLD_PG = {
    name: statement.replace("rowid", "seq")
    .replace(_BUCKET, _BUCKET_PG)
    .replace(_FALLBACK, _FALLBACK_PG)
    .replace("min(first_ts, excluded.first_ts)", f"least({name}.first_ts, excluded.first_ts)")
    .replace(" = requests + ", f" = {name}.requests + ")
    .replace(" = errors + ", f" = {name}.errors + ")
    .replace(" = fallbacks + ", f" = {name}.fallbacks + ")
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
class EntitySum:
    """One served entity's sums over a span: what a breakdown shows and prices."""

    endpoint: str
    served_entity: str  # the entity that answered (an endpoint of one model: the endpoint's name)
    requests: int
    errors: int
    fallbacks: int  # requests a fallback answered
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
        if db.execute("SELECT 1 FROM sqlite_master WHERE name = 'usage_entity_rollup_state'").fetchone():
            db.executescript(_RETIRED)
        db.executescript(_SCHEMA)
        return db

    def refresh(self) -> int:
        """Fold the rows written since the last refresh into the rollups; how many (the most any set of tables
        folded). One transaction: another process refreshing at the same time waits, then finds nothing left."""
        if self.database is not None:
            # The log's writers' turn: no row commits with a lower seq while the fold runs, so none is skipped.
            with self.database.transaction("usage", immediate=True) as shared_db:
                top = shared_db.execute("SELECT max(seq) FROM usage").fetchone()[0]
                return _fold(shared_db, _FOLD_PG, top)
        if not self.path.exists():
            return 0
        db = self._db()
        try:
            db.isolation_level = None
            db.execute("BEGIN IMMEDIATE")
            try:
                top = db.execute("SELECT max(rowid) FROM usage").fetchone()[0]
                folded = _fold(db, _FOLD, top)
                db.execute("COMMIT")
                return folded
            except BaseException:
                db.execute("ROLLBACK")
                raise
        finally:
            db.close()

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
        managed, known, condition, allowed = _scoped(scope)
        query = (
            f"{managed}SELECT d.{column}, d.endpoint, sum(d.requests), sum(d.errors), sum(d.rows),"
            " sum(d.input_tokens), sum(d.output_tokens), sum(d.latency_ms) FROM usage_daily d"
            f" WHERE d.day >= ? AND {condition}"
        )
        parameters = [*known, since_day, *allowed]
        if endpoint is not None:
            query += " AND d.endpoint = ?"
            parameters.append(endpoint)
        return [_daily_sum(r) for r in self._read(query + " GROUP BY 1, 2", parameters)]

    def entity_sums(self, since_day: str, scope: Scope, endpoint: str | None = None) -> list[EntitySum]:
        """Days from `since_day` (YYYY-MM-DD) that `scope` may read, of `endpoint` (None: all), summed per
        endpoint and the served entity that answered, in SQL."""
        managed, known, condition, allowed = _scoped(scope)
        query = (
            f"{managed}SELECT d.endpoint, d.served_entity, sum(d.requests), sum(d.errors), sum(d.fallbacks),"
            " sum(d.rows), sum(d.input_tokens), sum(d.output_tokens), sum(d.latency_ms)"
            f" FROM usage_entity_daily d WHERE d.day >= ? AND {condition}"
        )
        parameters = [*known, since_day, *allowed]
        if endpoint is not None:
            query += " AND d.endpoint = ?"
            parameters.append(endpoint)
        return [_entity_sum(r) for r in self._read(query + " GROUP BY 1, 2 ORDER BY 1, 2", parameters)]

    def entity_hourly(self, since_hour: str, endpoint: str, since: datetime | None) -> list[EntityHour]:
        """Per hour and served entity of one endpoint: requests and those a fallback answered, of buckets begun
        at or after `since` (None: all; an earlier endpoint of the name is another's)."""
        return [
            EntityHour(r[0], r[1], int(r[2]), int(r[3]))
            for r in self._read(
                "SELECT hour, served_entity, sum(requests), sum(fallbacks) FROM usage_entity_hourly"
                " WHERE hour >= ? AND endpoint = ? AND first_ts >= ? GROUP BY 1, 2 ORDER BY 1, 2",
                [since_hour, endpoint, since_stamp(since)],
            )
        ]


# Sums read as whole numbers: PostgreSQL's sum of a BIGINT is a numeric.
def _daily_sum(r: tuple[Any, ...]) -> DailySum:
    requests, errors, rows, input_tokens, output_tokens = (int(v) for v in r[2:7])
    return DailySum(r[0], r[1], requests, errors, rows, input_tokens, output_tokens, float(r[7]))


def _entity_sum(r: tuple[Any, ...]) -> EntitySum:
    requests, errors, fallbacks, rows, input_tokens, output_tokens = (int(v) for v in r[2:8])
    return EntitySum(r[0], r[1], requests, errors, fallbacks, rows, input_tokens, output_tokens, float(r[8]))


def _fold(db: Any, folds: Mapping[str, str], top: Any) -> int:
    """Fold each set of tables from its own place in the log up to `top` (the log's last row); the most rows
    any set folded. A set without a place starts from nothing: its tables are emptied first."""
    if top is None:
        return 0
    folded = 0
    for state, tables in _SETS.items():
        found = db.execute("SELECT last_rowid FROM usage_rollup_state WHERE name = ?", (state,)).fetchone()
        last = int(found[0]) if found else 0
        if int(top) <= last:
            continue
        for table in tables:
            if found is None:
                db.execute(f"DELETE FROM {table}")  # a constant name
            db.execute(folds[table], (last, int(top)))
        db.execute(
            "INSERT INTO usage_rollup_state (name, last_rowid) VALUES (?, ?)"
            " ON CONFLICT (name) DO UPDATE SET last_rowid = excluded.last_rowid",
            (state, int(top)),
        )
        folded = max(folded, int(top) - last)
    return folded


def _scoped(scope: Scope) -> tuple[str, list[Any], str, list[Any]]:
    """The WITH clause of the managed endpoints and its parameters, and the condition on the rollup `d` and its
    parameters, that keep the buckets `scope` may read: all, or the requester's begun since it was made, or a
    managed endpoint's begun since it was made."""
    managed = [(name, since_stamp(at)) for name, at in sorted(scope.endpoints.items())]
    parameters: list[Any] = [p for pair in managed for p in pair]
    cte = "WITH managed(endpoint, since) AS (VALUES " + ", ".join(["(?, ?)"] * len(managed)) + ") "
    if not managed:  # VALUES needs a row: one no endpoint has
        cte, parameters = "WITH managed(endpoint, since) AS (SELECT NULL, NULL) ", []
    condition = (
        "(? = 1 OR (d.requester = ? AND d.first_ts >= ?) OR EXISTS (SELECT 1 FROM managed m"
        " WHERE m.endpoint = d.endpoint AND d.first_ts >= m.since))"
    )
    return (
        cte,
        parameters,
        condition,
        [int(scope.everything), scope.requester, since_stamp(scope.requester_since)],
    )


def bucket_of(latency_ms: float) -> int:
    """The histogram bucket of a latency (as the rollup computes it in SQL)."""
    return math.floor(math.log2(max(latency_ms, 0.125)) * BUCKETS_PER_DOUBLING)
