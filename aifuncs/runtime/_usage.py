"""Usage accounting: one row per model request (endpoint, rows, tokens, characters, latency, status,
attempts; who asked, from where, with the caller's request id and labels).

Rows are buffered in memory and written to SQLite under AIFUNCS_HOME (or, with AIFUNCS_DATABASE_URL set, to
the shared database: one log for every host) by a thread of their own, every half
second while any wait (so another process sees them while this one idles), when a query ends, before anyone
reads them, and at exit: accounting costs the hot path a list append and one line of journal. Nothing paid
for is lost when a process dies or the file is locked: each request is journaled (aifuncs/_journal.py) as
sent before it goes, and its row when it comes back; a journal whose process died is replayed by the next
process to write or read the log, a request sent but never settled becoming a row of status `interrupted`
(it was paid). A locked `usage.db`, or the shared database away, only delays rows: they stay pending, in
order, and are written when it frees or returns; on the database each row is inserted once by its request id,
so a batch sent again after an answer lost with the connection adds nothing twice. A forked worker writes its rows before each query returns: it ends with `os._exit`, which runs no
atexit handler (its journal covers what that write could not).
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import sqlite3
import threading
import time
import uuid
import weakref
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple

from aifuncs._fork import after_fork_in_child, forked_child, held_across_fork
from aifuncs._home import home_file, private_file
from aifuncs._journal import Journal, dead_journals
from aifuncs._wal import add_columns, use_wal
from aifuncs.storage import Postgres, database_failing, shared

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
    "served_entity": "TEXT", "ttft_ms": "REAL",
}  # fmt: skip
_FLUSH_EVERY_S = 0.5
_RETRY_S = 0.25  # after a failed write, the next try waits at least this long
_REPLAY_EVERY_S = 2.0  # how often a writer looks for the journals of dead processes
LOCK_WAIT_S = 5.0  # a write waits this long for a locked file, then tries again later (rows kept)
_EXIT_WAIT_S = 1.0  # ...at exit: what is not written then is in the journal, for the next process
_COMPACT_BYTES = 256 * 1024  # a journal this long is rewritten with only what is still owed
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
    status: str  # ok | error | guardrail | interrupted (sent, then its process died: it was paid)
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
    ttft_ms: float | None = None  # a streamed answer's time to its first piece


_COLUMNS = ", ".join(UsageRow._fields)
_INSERT = f"INSERT INTO usage ({_COLUMNS}) VALUES ({', '.join('?' * len(UsageRow._fields))})"
_INSERT_ONCE = _INSERT + " ON CONFLICT (request_id) DO NOTHING"  # the shared database: unique by request id


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


class UsageLog:
    def __init__(self) -> None:
        self._pending: list[tuple[Path, UsageRow]] = []
        self._open: dict[str, tuple[Path, UsageRow]] = {}  # requests sent and not settled, by request id
        self._journals: dict[Path, Journal] = {}  # per usage.db
        self._lock = threading.Lock()  # guards the above; a journal line and its pending row go together
        self._writing = threading.Lock()  # one write at a time
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._busy = False
        self._replayed: dict[Path, float] = {}  # per usage.db: when dead journals were last looked for
        atexit.register(self.close)
        alive = weakref.ref(self)  # the hook must not keep every log ever made alive

        def reset_in_child() -> None:
            log = alive()
            if log is not None:
                log._after_fork()

        after_fork_in_child(reset_in_child)
        held_across_fork(self, lambda log: log._writing)

    def _after_fork(self) -> None:
        # A forked child has only the forking thread: a lock held by another thread would stay held, and the
        # rows pending are the parent's to write (its journal holds them). No write is under way: the fork
        # waited for it.
        self._lock = threading.Lock()
        self._pending, self._open, self._journals = [], {}, {}
        self._wake, self._thread = threading.Event(), None

    @property
    def _flushing(self) -> bool:
        """Whether a write is under way (a timed one: until its failure, if it fails, is told)."""
        return self._busy or self._writing.locked()

    def _journal(self, path: Path) -> Journal:
        found = self._journals.get(path)
        if found is None:
            found = self._journals[path] = Journal(path.parent, "usage")
        return found

    def sending(self, row: UsageRow) -> None:
        """A request is about to go (again: `attempts` counts them): journaled first, so that a process killed
        before its answer still leaves a row for it (status `interrupted`)."""
        path = home_file("usage.db")
        assert row.request_id is not None
        with self._lock:
            self._journal(path).append([{"sent": row._asdict()}])
            self._open[row.request_id] = (path, row)

    def record(self, row: UsageRow) -> None:
        if row.request_id is None:  # every row has one: a replay tells written rows by it
            row = row._replace(request_id=uuid.uuid4().hex)
        path = home_file("usage.db")  # the home of the moment the call ran
        with self._lock:
            self._journal(path).append([{"row": row._asdict()}])
            self._pending.append((path, row))
            self._open.pop(str(row.request_id), None)
            self._start_writer()

    def _start_writer(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._run, name="aifuncs-usage", daemon=True)
            self._thread.start()

    def query_done(self) -> None:
        """A query ended: its rows are written now, so that other processes see them while this one idles.
        Off the caller's thread, except in a forked child (a multiprocessing worker): it ends with
        `os._exit`, which skips atexit and stops threads mid-write, so its rows are written before the
        query returns (1-4 ms; what cannot be written now is in its journal)."""
        if forked_child():
            try:
                self.flush(_EXIT_WAIT_S)
            except Exception as error:
                _log.warning(
                    "usage log: cannot write %s (kept in its journal): %s", home_file("usage.db"), error
                )
            return
        self._wake.set()

    def _run(self) -> None:
        """The writer: pending rows every `_FLUSH_EVERY_S` (at once when woken), dead processes' journals
        every `_REPLAY_EVERY_S`. A failed write keeps its rows for the next turn."""
        failed = False
        while True:
            self._wake.wait(max(_FLUSH_EVERY_S, _RETRY_S) if failed else _FLUSH_EVERY_S)
            self._wake.clear()
            self._busy, failed = True, True
            try:
                self.flush()
                for path in list(self._journals):
                    if time.monotonic() - self._replayed.get(path, -_REPLAY_EVERY_S) >= _REPLAY_EVERY_S:
                        self.replay(path)
                failed = False
            except Exception as error:  # the rows stay pending; accounting must not fail a query
                _log.warning("usage log: cannot write (kept for the next write): %s", error)
            finally:
                self._busy = False

    def flush(self, wait_s: float = LOCK_WAIT_S) -> None:
        """Write the pending rows, waiting at most about `wait_s` for a locked file; a write under way (the
        writer thread waiting out that lock itself) is waited for within the same bound, so that an exit's
        brief write stays brief. Rows not written stay pending, and journaled."""
        with _taken(self._writing, wait_s):
            with self._lock:
                rows, self._pending = self._pending, []
            if not rows:
                return
            written: set[Path] = set()
            try:
                for path in dict.fromkeys(p for p, _ in rows):
                    batch = [r for p, r in rows if p == path]
                    database = shared(path)
                    if database is not None:
                        _insert_shared(database, batch, wait_s)
                        written.add(path)
                        continue
                    db = _waiting(_connect(path), wait_s)
                    try:
                        with db:
                            db.executemany(_INSERT, batch)
                    finally:
                        db.close()
                    written.add(path)
            except BaseException:
                with self._lock:  # not lost: the rows not committed go with the next flush, in order
                    self._pending[:0] = [(p, r) for p, r in rows if p not in written]
                raise
            finally:
                self._compact(written)

    def _compact(self, written: set[Path]) -> None:
        """Journals whose rows are all written are emptied; a long one keeps only what is still owed."""
        with self._lock:
            for path in written:
                journal = self._journals.get(path)
                if journal is None:
                    continue
                owed = [{"sent": r._asdict()} for p, r in self._open.values() if p == path]
                owed += [{"row": r._asdict()} for p, r in self._pending if p == path]
                if not owed or journal.size > _COMPACT_BYTES:
                    journal.rewrite(owed)

    def replay(self, path: Path | None = None, wait_s: float = LOCK_WAIT_S) -> int:
        """Write the rows of dead processes' journals beside `path` (usage.db) that are not written yet: a
        request that was sent and never settled as `interrupted`. Returns the rows written."""
        path = path or home_file("usage.db")
        self._replayed[path] = time.monotonic()
        with dead_journals(path.parent, "usage") as lines:
            if not lines:
                return 0
            rows: dict[str, UsageRow] = {}
            for line in lines:
                if "row" in line:
                    row = _row(line["row"])
                    rows[str(row.request_id)] = row
                elif "sent" in line:
                    row = _row(line["sent"])
                    if rows.get(str(row.request_id), row).status == "interrupted":  # never over a settled one
                        rows[str(row.request_id)] = row._replace(
                            status="interrupted",
                            error="the process ended before the answer came (killed?); the request was sent",
                        )
            database = shared(path)
            if database is not None:
                return _insert_shared(database, list(rows.values()), wait_s)
            db = _waiting(_connect(path), wait_s)
            try:
                with db:
                    before = db.total_changes
                    db.executemany(
                        f"INSERT INTO usage ({_COLUMNS}) SELECT {', '.join('?' * len(UsageRow._fields))}"
                        " WHERE NOT EXISTS (SELECT 1 FROM usage WHERE request_id = ?)",
                        [(*row, key) for key, row in rows.items()],
                    )
                    return db.total_changes - before
            finally:
                db.close()

    def close(self) -> None:
        """At exit: write what is pending, briefly (a locked file must not hold the exit up: what is not
        written is in the journal), and remove the journals whose rows are all written."""
        try:
            self.flush(_EXIT_WAIT_S)
        except Exception as error:
            _log.warning("usage log: rows not written at exit are kept in its journal: %s", error)
            return
        with self._lock:
            for path, journal in self._journals.items():
                journal.close(remove=not any(p == path for p, _ in self._open.values()))

    def read(self) -> list[dict[str, Any]]:
        """Every row, oldest first: this home's, or every host's on the shared database."""
        self.flush()
        path = home_file("usage.db")
        with _passing():
            self.replay(path)
        database = shared(path)
        if database is not None:
            found = database.reader().execute(f"SELECT {_COLUMNS} FROM usage ORDER BY ts, seq").fetchall()
            return [dict(zip(UsageRow._fields, r, strict=True)) for r in found]
        if not path.exists():
            return []
        db = _connect(path)
        try:
            db.row_factory = sqlite3.Row
            return [dict(r) for r in db.execute(f"SELECT {_COLUMNS} FROM usage ORDER BY ts")]
        finally:
            db.close()

    def spent(self, usage_context: str) -> tuple[int, int]:
        """Requests sent (attempts, hedges included) and tokens used by the rows labelled `usage_context`
        (a job run's), whatever became of them: written, pending, or left in a dead process's journal."""
        self.flush()
        path = home_file("usage.db")
        with self._lock:  # sent and not back yet (a stopped query's): paid all the same
            in_flight = sum(
                r.attempts for p, r in self._open.values() if p == path and r.usage_context == usage_context
            )
        with _passing():
            self.replay(path)
        query = (
            "SELECT coalesce(sum(attempts), 0), coalesce(sum(coalesce(input_tokens, 0)"
            " + coalesce(output_tokens, 0)), 0) FROM usage WHERE usage_context = ?"
        )
        database = shared(path)
        if database is not None:
            requests, tokens = database.reader().execute(query, (usage_context,)).fetchone()
            return int(requests) + in_flight, int(tokens)
        if not path.exists():
            return in_flight, 0
        db = _connect(path)
        try:
            requests, tokens = db.execute(query, (usage_context,)).fetchone()
            return int(requests) + in_flight, int(tokens)
        finally:
            db.close()


@contextlib.contextmanager
def _taken(lock: threading.Lock, wait_s: float) -> Iterator[None]:
    """`lock` held for the block, waited for at most `wait_s` (then as a locked file is: rows kept)."""
    if not lock.acquire(timeout=wait_s):
        raise sqlite3.OperationalError("database is locked (the usage log's writer is waiting on it)")
    try:
        yield
    finally:
        lock.release()


@contextlib.contextmanager
def _passing() -> Iterator[None]:
    """A replay that meets a locked file or the database away is left for the next reader or write."""
    try:
        yield
    except Exception as error:
        if not (isinstance(error, sqlite3.OperationalError) or database_failing(error)):
            raise


def _insert_shared(database: Postgres, rows: list[UsageRow], wait_s: float) -> int:
    """Insert the rows the shared database lacks (by request id), as one transaction; how many were new.
    Writers take the log's turn: rows commit in the order of their `seq`, which the rollups fold by."""
    with database.transaction("usage", immediate=True, wait_s=wait_s) as db:
        return int(db.executemany(_INSERT_ONCE, rows).rowcount) if rows else 0


def _waiting(db: sqlite3.Connection, wait_s: float) -> sqlite3.Connection:
    """`db` waiting at most `wait_s` for a lock another process holds."""
    db.execute(f"PRAGMA busy_timeout = {int(wait_s * 1000)}")
    return db


def _row(fields: dict[str, Any]) -> UsageRow:
    """A journaled row (a journal written by another version may lack or add fields)."""
    return UsageRow._make(fields.get(name) for name in UsageRow._fields)


def _connect(path: Path) -> sqlite3.Connection:
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(private_file(path), timeout=LOCK_WAIT_S)
    try:
        use_wal(db, LOCK_WAIT_S)
        db.execute(_SCHEMA)
        add_columns(db, "usage", _ADDED)
        db.execute("CREATE INDEX IF NOT EXISTS usage_by_request ON usage(request_id)")  # replay's check
    except BaseException:
        db.close()
        raise
    return db
