"""Usage accounting: one row per model request (endpoint, rows, tokens, characters, latency, status,
attempts; who asked, from where, with the caller's request id and labels).

Rows are buffered in memory and written to SQLite under AIFUNCS_HOME in batches (at most every
half second, when a query ends, before anyone reads them, and at exit), so accounting costs the hot
path a list append: those writes run on a thread of their own (a write takes 1-4 ms, which on the event
loop delayed the answers of the model calls still in flight). A forked worker writes its rows before
each query returns: it ends with `os._exit`, which runs no atexit handler.
"""

from __future__ import annotations

import atexit
import logging
import sqlite3
import threading
import time
import weakref
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple

from aifuncs._fork import after_fork_in_child, forked_child, held_across_fork
from aifuncs._home import home_file, private_file
from aifuncs._wal import add_columns, use_wal

_SCHEMA = """
CREATE TABLE IF NOT EXISTS usage (
    ts TEXT NOT NULL, endpoint TEXT NOT NULL, endpoint_version INTEGER, kind TEXT, function TEXT,
    rows INTEGER, input_tokens INTEGER, output_tokens INTEGER, latency_ms REAL,
    status TEXT, attempts INTEGER, error TEXT
)
"""
# Columns added since the first version: a log written by an older aifuncs gains them, empty.
_ADDED = {
    "request_id": "TEXT", "requester": "TEXT", "origin": "TEXT", "client_request_id": "TEXT",
    "usage_context": "TEXT", "status_code": "INTEGER", "input_chars": "INTEGER", "output_chars": "INTEGER",
    "served_entity": "TEXT",
}  # fmt: skip
_FLUSH_EVERY_S = 0.5
_log = logging.getLogger("aifuncs")


class UsageRow(NamedTuple):  # a tuple: written to SQLite as it is
    ts: str
    endpoint: str
    endpoint_version: int
    kind: str
    function: str
    rows: int
    input_tokens: int | None
    output_tokens: int | None
    latency_ms: float
    status: str  # ok | error
    attempts: int
    error: str | None
    request_id: str | None = None
    requester: str | None = None  # the principal
    origin: str | None = None  # sql | pandas | job | rest
    client_request_id: str | None = None
    usage_context: str | None = None  # JSON object of the caller's labels
    status_code: int | None = None  # 200, or the HTTP status (500 when the failure was not an HTTP answer)
    input_chars: int | None = None  # text requests only
    output_chars: int | None = None  # text answers only
    served_entity: str | None = None


_COLUMNS = ", ".join(UsageRow._fields)


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


class UsageLog:
    def __init__(self) -> None:
        self._pending: list[tuple[Path, UsageRow]] = []
        self._lock = threading.Lock()  # guards _pending
        self._writing = threading.Lock()  # one write at a time
        self._last_flush = time.monotonic()
        self._flushing = False  # a timed write is on its way
        atexit.register(self.flush)
        alive = weakref.ref(self)  # the hook must not keep every log ever made alive

        def reset_in_child() -> None:
            log = alive()
            if log is not None:
                log._after_fork()

        after_fork_in_child(reset_in_child)
        held_across_fork(self, lambda log: log._writing)

    def _after_fork(self) -> None:
        # A forked child has only the forking thread: a lock held by another thread would stay held, and the
        # rows pending are the parent's to write. (No write is under way: the fork waited for it.)
        self._lock = threading.Lock()
        self._pending = []
        self._flushing = False

    def record(self, row: UsageRow) -> None:
        with self._lock:
            self._pending.append((home_file("usage.db"), row))  # the home of the moment the call ran
            due = not self._flushing and time.monotonic() - self._last_flush > _FLUSH_EVERY_S
            self._flushing = self._flushing or due
        if due:
            threading.Thread(target=self._timed_flush, name="aifuncs-usage", daemon=True).start()

    def query_done(self) -> None:
        """A query ended: its rows are written now, so that other processes see them while this one idles.
        Off the caller's thread, except in a forked child (a multiprocessing worker): it ends with
        `os._exit`, which skips atexit and stops threads mid-write, so its rows are written before the
        query returns (1-4 ms)."""
        if forked_child():
            try:
                self.flush()
            except Exception as error:
                _log.warning(
                    "usage log: cannot write %s (kept for the next write): %s", home_file("usage.db"), error
                )
            return
        with self._lock:
            start = bool(self._pending) and not self._flushing
            self._flushing = self._flushing or start
        if start:
            threading.Thread(target=self._timed_flush, name="aifuncs-usage", daemon=True).start()

    def _timed_flush(self) -> None:
        try:
            self.flush()
        except Exception as error:  # the rows stay pending; accounting must not fail a query
            _log.warning(
                "usage log: cannot write %s (kept for the next write): %s", home_file("usage.db"), error
            )
        finally:
            with self._lock:
                self._flushing = False

    def flush(self) -> None:
        with self._writing:
            with self._lock:
                rows, self._pending = self._pending, []
                self._last_flush = time.monotonic()
            if not rows:
                return
            written: set[Path] = set()
            try:
                for path in dict.fromkeys(p for p, _ in rows):
                    db = _connect(path)
                    try:
                        with db:
                            db.executemany(
                                f"INSERT INTO usage ({_COLUMNS}) VALUES ({', '.join('?' * len(UsageRow._fields))})",
                                [r for p, r in rows if p == path],
                            )
                    finally:
                        db.close()
                    written.add(path)
            except BaseException:
                with self._lock:  # not lost: the rows not committed go with the next flush
                    self._pending[:0] = [(p, r) for p, r in rows if p not in written]
                raise

    def read(self) -> list[dict[str, Any]]:
        self.flush()
        path = home_file("usage.db")
        if not path.exists():
            return []
        db = _connect(path)
        try:
            db.row_factory = sqlite3.Row
            return [dict(r) for r in db.execute(f"SELECT {_COLUMNS} FROM usage ORDER BY ts")]
        finally:
            db.close()


def _connect(path: Path) -> sqlite3.Connection:
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(private_file(path), timeout=30)
    use_wal(db)
    db.execute(_SCHEMA)
    add_columns(db, "usage", _ADDED)
    return db
