"""The rate limiter's buckets on PostgreSQL (migration 0002): each admission, debit or look is one statement,
so one round trip, on a connection of the limiter's own. The clock is the database's: hosts whose clocks
disagree still share one bucket exactly.

Every call waits a bounded time: `wait_s` for the database to answer (a statement timeout, and a TCP timeout
for a server that went silent), at most 2 s to connect. Past it `BucketsUnavailable` says whether the change
may have been made: the caller's limiter fails closed either way."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

from aifuncs.errors import AifuncsError
from aifuncs.storage._postgres import Postgres, _driver
from aifuncs.storage._url import redact, scrub

__all__ = ["Admission", "BucketsUnavailable", "PgBuckets"]

CONNECT_TIMEOUT_S = 2  # libpq's least


class BucketsUnavailable(Exception):
    """The database did not answer in time. `rolled_back`: the statement certainly changed nothing (the
    server refused or timed it out); False when the connection broke and a commit may have happened."""

    def __init__(self, reason: str, rolled_back: bool) -> None:
        super().__init__(reason)
        self.rolled_back = rolled_back


Admission = tuple[float | None, int | None, list[int] | None]  # (wait_s, refused check, leased per bucket)


class PgBuckets:
    """GCRA buckets in the shared database, spoken to over one connection by whichever thread holds the
    limiter's lock."""

    def __init__(self, database: Postgres, wait_s: float) -> None:
        self.database = database
        self.wait_s = wait_s
        self._conn: Any = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"PgBuckets({redact(self.database.url)!r})"

    @property
    def where(self) -> str:
        return redact(self.database.url)

    def _connection(self) -> Any:
        if self._conn is not None and not self._conn.closed and not self._conn.broken:
            return self._conn
        psycopg, _ = _driver()
        self.database.pool()  # the schema migrated before the first admission
        timeout_ms = int(self.wait_s * 1000)
        self._conn = psycopg.connect(
            self.database.url,
            autocommit=True,
            connect_timeout=CONNECT_TIMEOUT_S,
            options=f"-c statement_timeout={timeout_ms}",  # numbers made here, never a user's value
            tcp_user_timeout=timeout_ms,
            keepalives_idle=max(1, int(self.wait_s)),
        )
        return self._conn

    def _run(self, sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        psycopg, _ = _driver()
        with self._lock:
            try:
                conn = self._connection()
            except (psycopg.Error, AifuncsError) as error:  # nothing was sent
                raise BucketsUnavailable(self._reason(error), rolled_back=True) from None
            try:
                return list(conn.execute(sql, params).fetchall())
            except psycopg.Error as error:
                broken = conn.closed or conn.broken  # else the server answered: the statement rolled back
                if broken:
                    conn.close()
                    self._conn = None
                raise BucketsUnavailable(self._reason(error), rolled_back=not broken) from None

    def _reason(self, error: BaseException) -> str:
        text = str(error).strip()
        return scrub(text.splitlines()[0] if text else type(error).__name__, self.database.url)

    def acquire(
        self,
        checks: Sequence[int],
        keys: Sequence[str],
        intervals: Sequence[float],
        bursts: Sequence[float],
        costs: Sequence[float],
        calls: Sequence[bool],
        leases: Sequence[int],
        headroom: int,
        credits: dict[str, float],
    ) -> Admission:
        """One admission (see migration 0002's aifuncs_limit_acquire): (None, None, leased) when admitted,
        else (wait_s, refused check, None)."""
        (row,) = self._run(
            "SELECT wait_s, refused, leased FROM aifuncs_limit_acquire(%s::int[], %s::text[], %s::float8[],"
            " %s::float8[], %s::float8[], %s::boolean[], %s::int[], %s, %s::text[], %s::float8[])",
            (list(checks), list(keys), list(intervals), list(bursts), list(costs), list(calls), list(leases),
             headroom, list(credits), list(credits.values())),
        )  # fmt: skip
        return row[0], row[1], row[2]

    def add(self, seconds: dict[str, float]) -> None:
        """Move buckets' arrival times on by `seconds` each (a token debit)."""
        self._run(
            "UPDATE limit_buckets b SET tat = b.tat + d.s FROM unnest(%s::text[], %s::float8[]) AS d(key, s)"
            " WHERE b.key = d.key",
            (list(seconds), list(seconds.values())),
        )

    def look(self, keys: Sequence[str]) -> tuple[float, dict[str, float]]:
        """The database's clock and the arrival times of `keys` (those that have one), taking nothing."""
        rows = self._run(
            "SELECT extract(epoch FROM clock_timestamp())::float8, k, b.tat FROM unnest(%s::text[]) k"
            " LEFT JOIN limit_buckets b ON b.key = k",
            (list(keys),),
        )
        now = float(rows[0][0]) if rows else 0.0
        return now, {r[1]: float(r[2]) for r in rows if r[2] is not None}

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
