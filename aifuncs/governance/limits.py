"""Rate limits in Databricks' AI gateway shape, enforced exactly across every process sharing AIFUNCS_HOME.

    {"calls": 600, "renewal_period": "minute", "key": "endpoint"}            # the endpoint's global cap
    {"tokens": 50000, "key": "user"}                                        # each user's default
    {"calls": 10, "key": "user_group", "principal": "data-eng"}             # shared by the group's members
    {"calls": 5, "key": "service_principal", "principal": "nightly-etl"}    # one principal's own

Precedence (Databricks'): the endpoint limit caps everyone; a principal's own limit beats its groups'; a
group limit is shared by its members, and one in several limited groups is held back only when all of
them are spent; otherwise the `user` default applies, per principal. With calls and tokens both set, both
hold (the stricter wins).

Each limit is a GCRA bucket (a "theoretical arrival time" per key) in one SQLite file, taken under
`BEGIN IMMEDIATE` with the clock read after the lock: exact across processes, no server to run. With
AIFUNCS_DATABASE_URL set the buckets live in the shared PostgreSQL database instead (one function call an
admission, the database's clock, rows locked in key order): exact across hosts. A call costs 1; a token
limit reserves an estimate when the request leaves (prompt + max_tokens) and settles to what the model
reports: more at once, less (the usual case) with the process's next admission. In any t seconds a bucket
admits at most burst + rate x t; the burst defaults to one second's worth (at least one request). The rules
(the gateway's shape, precedence) are in `_limit_rules.py`; this module keeps the buckets.
"""

from __future__ import annotations

import math
import os
import sqlite3
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from aifuncs._home import private_file
from aifuncs._wal import use_wal
from aifuncs.errors import LimiterUnavailable
from aifuncs.governance._limit_rules import (
    KEYS,
    MAX_GROUP_LIMITS,
    MAX_LIMITS,
    Bucket,
    Check,
    RateLimit,
    applicable,
    pace,
    parse_limits,
    reservable,
)
from aifuncs.storage import Postgres, shared
from aifuncs.storage._buckets import BucketsUnavailable, PgBuckets

__all__ = [
    "KEYS",
    "MAX_GROUP_LIMITS",
    "MAX_LIMITS",
    "Bucket",
    "Check",
    "Limiter",
    "RateLimit",
    "Reservation",
    "applicable",
    "open_limiter",
    "pace",
    "parse_limits",
    "reservable",
]


@dataclass(frozen=True)
class Reservation:
    """What an admitted request took: the token buckets to settle when the model reports its usage."""

    buckets: tuple[Bucket, ...]
    tokens: int


@dataclass(frozen=True)
class Refusal:
    wait_s: float  # the real wait: after it the same request would be admitted, if nothing else takes room
    label: str


_SCHEMA = "CREATE TABLE IF NOT EXISTS buckets (key TEXT PRIMARY KEY, tat REAL NOT NULL)"

# Leases: far from its limit, a bucket lends a process room for the requests of the next LEASE_S (at most
# LEASE_MAX calls), taken in the transaction of the request that asked, so a busy server does not write the
# file on every request. Lent only while at least LEASE_HEADROOM times as much room is left after it, and
# only from limits of at least 2 calls per LEASE_S: near its limit, or for a slow limit, every request is
# counted in the file as it comes. Room lent but not used goes back when the lease lapses. A lease takes
# its room early, so in any t seconds a bucket admits at most burst + rate x (t + LEASE_S).
LEASE_S = 0.25
# The store locked by another process: an admission waits this long for it, then refuses (fails closed), and
# the admissions of the next UNAVAILABLE_S are refused at once rather than each waiting in turn.
LOCK_WAIT_S = 2.0
UNAVAILABLE_S = 1.0
LEASE_MAX = 64
LEASE_HEADROOM = 4


@dataclass
class _Lease:
    units: float  # calls left to spend (a token bucket's lease only lets requests of no tokens through)
    until: float  # time.monotonic() when it lapses
    interval_s: float = 0.0  # the bucket's seconds per call, to give back what is left


def _lease_offer(bucket: Bucket) -> int:
    """Calls `bucket` may lend ahead (0: a limit too slow to lend from)."""
    size = min(LEASE_MAX, math.floor(bucket.per_minute / 60 * LEASE_S))
    return size if size >= 2 else 0


def _lease_size(bucket: Bucket, cost: int, room_s: float) -> int:
    """Calls to lease beside a request that `bucket` admits with `room_s` seconds of room to spare."""
    size = _lease_offer(bucket)
    if not size or room_s / bucket.interval_s < (LEASE_HEADROOM + 1) * size:
        return 0
    return size


def open_limiter(path: Path) -> Limiter:
    """The limiter of the home whose `limits.db` is `path`: that file, or the shared database when
    AIFUNCS_DATABASE_URL names one."""
    return Limiter(path, shared(path))


class Limiter:
    """GCRA buckets in one SQLite file (`limits.db` beside the catalog), shared by every process; or, given
    `database`, in the shared PostgreSQL database, shared by every host."""

    def __init__(self, path: Path, database: Postgres | None = None) -> None:
        self.path = path
        self._buckets = None if database is None else PgBuckets(database, LOCK_WAIT_S)
        self._db: sqlite3.Connection | None = None
        self._pid = 0
        self._lock = threading.Lock()  # one connection, used by whichever thread asks
        # Tokens reserved beyond what requests used, returned with this process's next admission: one
        # transaction a request instead of two. Returning them late only ever refuses, never over-admits.
        self._credits: dict[str, float] = {}
        self._credit_lock = threading.Lock()  # credits alone: settling never waits for a transaction
        self._leases: dict[str, _Lease] = {}  # per bucket: room taken ahead, spent without a transaction
        self._unavailable_until = 0.0  # time.monotonic() until which the store is taken as locked

    def __repr__(self) -> str:
        return f"Limiter({str(self.path) if self._buckets is None else self._buckets.where!r})"

    def _connection(self) -> sqlite3.Connection:
        if self._db is None or self._pid != os.getpid():  # a forked child opens its own
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(
                private_file(self.path), timeout=LOCK_WAIT_S, isolation_level=None, check_same_thread=False
            )
            use_wal(db, LOCK_WAIT_S)
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute(_SCHEMA)
            self._db, self._pid = db, os.getpid()
        return self._db

    def try_acquire(self, checks: Sequence[Check], tokens: int) -> Reservation | Refusal:
        """Admit one request costing 1 call and `tokens` tokens under every check, or say how long to wait.
        Nothing is taken unless everything is: a refused request leaves every bucket as it was."""
        tokens = reservable(checks, tokens)
        with self._lock:
            found = self._from_leases(checks, tokens)
            if found is not None:
                return found
            self.check_available()
            try:
                if self._buckets is not None:
                    return self._try_acquire_shared(self._buckets, checks, tokens)
                return self._try_acquire(checks, tokens)
            except (sqlite3.OperationalError, BucketsUnavailable) as error:
                self._unavailable_until = time.monotonic() + UNAVAILABLE_S
                raise self._unavailable(error) from error

    def peek(self, checks: Sequence[Check]) -> Refusal | None:
        """How long until one call would be admitted under every check, taking nothing (None: now). For work
        done on a request's behalf before it is admitted (a guardrail's topic check), so a request its limits
        will refuse costs nothing first."""
        with self._lock:
            self.check_available()
            keys = sorted({b.key for check in checks for b in check.any_of})
            marks = ",".join("?" * len(keys))
            try:
                if self._buckets is not None:
                    now, tats = self._buckets.look(keys)
                else:
                    rows = self._connection().execute(
                        f"SELECT key, tat FROM buckets WHERE key IN ({marks})", keys
                    )
                    tats, now = dict(rows.fetchall()), time.time()
            except (sqlite3.OperationalError, BucketsUnavailable) as error:
                self._unavailable_until = time.monotonic() + UNAVAILABLE_S
                raise self._unavailable(error) from error
            clock = time.monotonic()
        worst: Refusal | None = None
        for check in checks:
            waits = []
            for bucket in check.any_of:
                lease = self._leases.get(bucket.key)
                if bucket.unit == "calls" and lease is not None and lease.until > clock and lease.units >= 1:
                    break  # room this process took ahead
                cost = 1 if bucket.unit == "calls" else 0
                tat = max(tats.get(bucket.key, now), now)
                wait = tat + cost * bucket.interval_s - max(bucket.burst, cost) * bucket.interval_s - now
                if wait <= 1e-6:
                    break
                waits.append(wait)
            else:
                if worst is None or min(waits) > worst.wait_s:
                    worst = Refusal(min(waits), check.label)
        return worst

    def try_leased(self, checks: Sequence[Check], tokens: int) -> Reservation | None:
        """`try_acquire` from room leased ahead only, never waiting (for an event loop): None when a
        transaction is needed, or another thread holds the limiter."""
        tokens = reservable(checks, tokens)
        if not self._lock.acquire(blocking=False):
            return None
        try:
            return self._from_leases(checks, tokens)
        finally:
            self._lock.release()

    def check_available(self) -> None:
        """Raise `LimiterUnavailable` while the store was just found locked."""
        if time.monotonic() < self._unavailable_until:
            raise self._unavailable(None)

    def _unavailable(self, error: BaseException | None) -> LimiterUnavailable:
        if self._buckets is None:
            why = f"{self.path.name} is locked by another process"
        else:
            reason = f" ({error})" if isinstance(error, BucketsUnavailable) else ""
            why = f"the database {self._buckets.where} did not answer within {LOCK_WAIT_S:g} s{reason}"
        return LimiterUnavailable(
            f"The rate limits cannot be checked: {why}. The request was not sent; retry shortly.",
            UNAVAILABLE_S,
        )

    def _from_leases(self, checks: Sequence[Check], tokens: int) -> Reservation | None:
        """Admit from room this process took ahead (see `_Lease`), if every check has some; else None."""
        if not self._leases:
            return None
        now = time.monotonic()
        chosen: list[tuple[_Lease, float]] = []
        for check in checks:
            for bucket in check.any_of:
                lease = self._leases.get(bucket.key)
                cost = 1 if bucket.unit == "calls" else tokens
                if lease is not None and lease.until > now and lease.units >= cost:
                    chosen.append((lease, cost))
                    break
            else:
                return None
        for spent, units in chosen:
            spent.units -= units
        return Reservation((), tokens)  # nothing to settle: a lease only ever covers requests of no tokens

    def _try_acquire(self, checks: Sequence[Check], tokens: int) -> Reservation | Refusal:
        db = self._connection()
        db.execute("BEGIN IMMEDIATE")
        self._return_leases()
        with self._credit_lock:
            credits, self._credits = self._credits, {}
        try:
            if credits:
                db.executemany(
                    "UPDATE buckets SET tat = tat - ? WHERE key = ?", [(s, k) for k, s in credits.items()]
                )
            now = time.time()  # read under the lock: an earlier clock would refuse what is due
            keys = sorted({b.key for check in checks for b in check.any_of})
            marks = ",".join("?" * len(keys))
            tats = dict(db.execute(f"SELECT key, tat FROM buckets WHERE key IN ({marks})", keys).fetchall())
            taken: dict[str, float] = {}
            leases: dict[str, _Lease] = {}
            lease_until = time.monotonic() + LEASE_S
            worst: Refusal | None = None
            for check in checks:
                waits = []
                for bucket in check.any_of:
                    cost = 1 if bucket.unit == "calls" else max(tokens, 0)
                    base = max(tats.get(bucket.key, now), now)
                    due = base + cost * bucket.interval_s
                    # a request bigger than the burst passes when its bucket is empty, never otherwise
                    tolerance = max(bucket.burst, cost) * bucket.interval_s
                    wait = due - tolerance - now
                    if wait <= 1e-6:  # float sums of intervals must not refuse what is due
                        ahead = _lease_size(bucket, cost, -wait) if tokens == 0 else 0
                        if ahead:  # a lease: room for requests to come, taken now with this one
                            if bucket.unit == "calls":
                                leases[bucket.key] = _Lease(ahead, lease_until, bucket.interval_s)
                                due += ahead * bucket.interval_s
                            else:
                                leases[bucket.key] = _Lease(0, lease_until)
                        taken[bucket.key] = due
                        tats[bucket.key] = due
                        break
                    waits.append(wait)
                else:
                    refusal = Refusal(min(waits), check.label)
                    if worst is None or refusal.wait_s > worst.wait_s:
                        worst = refusal
            if worst is not None:
                db.execute("COMMIT" if credits else "ROLLBACK")  # the credits stand; the request took nothing
                return worst
            db.executemany(
                "INSERT INTO buckets (key, tat) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET tat = excluded.tat",
                list(taken.items()),
            )
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            with self._credit_lock:
                for key, seconds in credits.items():  # not lost: returned with the next admission
                    self._credits[key] = self._credits.get(key, 0.0) + seconds
            raise
        self._unavailable_until = 0.0
        self._leases.update({k: v for k, v in leases.items() if k in taken})
        charged = tuple(b for check in checks for b in check.any_of if b.unit == "tokens" and b.key in taken)
        return Reservation(charged, tokens)

    def _try_acquire_shared(
        self, buckets: PgBuckets, checks: Sequence[Check], tokens: int
    ) -> Reservation | Refusal:
        """`_try_acquire` in the shared database: the same GCRA, leases and credits, in one round trip."""
        self._return_leases()
        with self._credit_lock:
            credits, self._credits = self._credits, {}
        flat = [(number, b) for number, check in enumerate(checks) for b in check.any_of]
        try:
            wait_s, refused, leased = buckets.acquire(
                [number for number, _ in flat],
                [b.key for _, b in flat],
                [b.interval_s for _, b in flat],
                [float(b.burst) for _, b in flat],
                [1.0 if b.unit == "calls" else float(max(tokens, 0)) for _, b in flat],
                [b.unit == "calls" for _, b in flat],
                [_lease_offer(b) if tokens == 0 else 0 for _, b in flat],
                LEASE_HEADROOM,
                credits,
            )
        except BucketsUnavailable as error:
            if error.rolled_back:  # not applied: returned with the next admission (else dropped: they may
                with self._credit_lock:  # have been, and a credit lost only ever refuses)
                    for key, seconds in credits.items():
                        self._credits[key] = self._credits.get(key, 0.0) + seconds
            raise
        self._unavailable_until = 0.0
        if wait_s is not None:
            return Refusal(float(wait_s), checks[int(refused or 0)].label)
        lease_until = time.monotonic() + LEASE_S
        taken: set[str] = set()
        for (_, bucket), ahead in zip(flat, leased or (), strict=False):
            if ahead < 0:
                continue
            taken.add(bucket.key)
            if ahead:  # a token bucket's lease only lets requests of no tokens through
                units = ahead if bucket.unit == "calls" else 0
                self._leases[bucket.key] = _Lease(units, lease_until, bucket.interval_s if units else 0.0)
        charged = tuple(b for _, b in flat if b.unit == "tokens" and b.key in taken)
        return Reservation(charged, tokens)

    def _return_leases(self) -> None:
        """Calls leased and not used by the time they lapsed go back to their buckets (as credits, in the
        transaction under way)."""
        now = time.monotonic()
        for key, lease in list(self._leases.items()):
            if lease.until <= now:
                del self._leases[key]
                if lease.units and lease.interval_s:
                    with self._credit_lock:
                        self._credits[key] = self._credits.get(key, 0.0) + lease.units * lease.interval_s

    def settle(self, reservation: Reservation, used_tokens: int) -> None:
        """Correct the token buckets from the estimate reserved to the tokens the model reports."""
        if not reservation.buckets or used_tokens == reservation.tokens:
            return
        if used_tokens < reservation.tokens:  # a credit: it waits for this process's next admission
            self._credit(reservation, used_tokens)
            return
        with self._lock:
            try:  # a debit: at once, so no process over-admits meanwhile
                if self._buckets is not None:
                    extra = used_tokens - reservation.tokens
                    self._buckets.add({b.key: extra * b.interval_s for b in reservation.buckets})
                else:
                    self._settle(reservation, used_tokens)
            except (sqlite3.OperationalError, BucketsUnavailable):  # kept, applied with the next admission
                self._credit(reservation, used_tokens)

    def _credit(self, reservation: Reservation, used_tokens: int) -> None:
        with self._credit_lock:
            for bucket in reservation.buckets:
                seconds = (reservation.tokens - used_tokens) * bucket.interval_s
                self._credits[bucket.key] = self._credits.get(bucket.key, 0.0) + seconds

    def _settle(self, reservation: Reservation, used_tokens: int) -> None:
        db = self._connection()
        db.execute("BEGIN IMMEDIATE")
        try:
            for bucket in reservation.buckets:
                db.execute(
                    "UPDATE buckets SET tat = tat + ? WHERE key = ?",
                    ((used_tokens - reservation.tokens) * bucket.interval_s, bucket.key),
                )
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
