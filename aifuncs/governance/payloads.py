"""Inference tables: one row per model request of an endpoint that has them switched on, in Databricks' columns.

    aifuncs.endpoints.put_ai_gateway("gpt", {"inference_table_config": {"enabled": True, "retention_days": 30}})
    SELECT * FROM aifuncs_payloads

Rows are written off the request path: buffered, and written by a thread of their own every
`FLUSH_EVERY_S` seconds, when a query ends and at exit. Each row is also appended to the process's journal
(aifuncs/_journal.py; sealed first when a key is configured, so no payload is there in clear) as it is
buffered, so a process killed with `kill -9` loses none: the next process to write or read the table replays
a dead process's journal (rows are told apart by request id: none is written twice). A locked file delays
rows, in order, never stalls a request: no write waits on the event loop. `"sync": true` writes each row
before its request returns (for audits) when the file is free; when another process holds it, the row is in
the journal before the request returns and in the table once the file frees. A
request or response over `max_payload_bytes` (1 MiB unless set) is stored as NULL with a logging error code,
as Databricks does. Refusals (403 at plan time, 429 by a rate limit) are recorded as rows without payload.
Rows older than `retention_days` are deleted as new ones are written. The table lives in
`AIFUNCS_HOME/payloads.db`, or with AIFUNCS_DATABASE_URL set in the shared database (table `payloads`, one
for every host): payloads go there as sealed as they are here (the key stays with the hosts), each row once by
its request id, and rows buffered while the database is away are written when it returns.
"""

from __future__ import annotations

import atexit
import logging
import sqlite3
import threading
import time
import uuid
import weakref
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, NamedTuple

from aifuncs._fork import after_fork_in_child, held_across_fork, renewed_in_child
from aifuncs._home import private_file
from aifuncs._journal import Journal, dead_journals
from aifuncs._wal import use_wal
from aifuncs.errors import ConfigError
from aifuncs.governance.keys import EncryptionError, keyring
from aifuncs.storage import Connection, Postgres, database_failing, shared

__all__ = [
    "InferenceTable",
    "PayloadLog",
    "PayloadRow",
    "parse_inference_table",
    "payload_log",
    "record_refusal",
]

MAX_PAYLOAD_BYTES = 1 << 20  # Databricks' cap: larger payloads are logged as NULL with an error code
FLUSH_EVERY_S = 0.5
LOCK_WAIT_S = 5.0  # the writer waits this long for a locked file, then tries again later (rows kept)
_SYNC_WAIT_S = 0.02  # a sync write on the request path waits this long at most; then the writer takes it
_EXIT_WAIT_S = 1.0
_REPLAY_EVERY_S = 2.0
_COMPACT_BYTES = 1 << 20
_PRUNE_EVERY_S = 3600.0
_FIELDS = {"enabled", "retention_days", "max_payload_bytes", "sync", "catalog_name", "schema_name",
           "table_name_prefix"}  # fmt: skip
_log = logging.getLogger("aifuncs")


@dataclass(frozen=True)
class InferenceTable:
    enabled: bool = False
    retention_days: int | None = None  # None: kept until deleted
    max_payload_bytes: int = MAX_PAYLOAD_BYTES
    sync: bool = False  # write each row before its request returns
    catalog_name: str | None = None  # where Databricks would keep the table: kept and echoed
    schema_name: str | None = None
    table_name_prefix: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}


def parse_inference_table(config: Any) -> InferenceTable:
    if not isinstance(config, dict):
        raise ConfigError(
            'inference_table_config is an object, e.g. {"enabled": true, "retention_days": 30}.'
        )
    unknown = sorted(set(config) - _FIELDS)
    if unknown:
        raise ConfigError(
            f"inference_table_config has unknown fields {unknown}; fields: {', '.join(sorted(_FIELDS))}."
        )
    for name in ("enabled", "sync"):
        if name in config and not isinstance(config[name], bool):
            raise ConfigError(f"inference_table_config.{name} is true or false, not {config[name]!r}.")
    for name in ("retention_days", "max_payload_bytes"):
        value = config.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value <= 0):
            raise ConfigError(f"inference_table_config.{name} is a positive whole number, not {value!r}.")
    for name in ("catalog_name", "schema_name", "table_name_prefix"):
        if config.get(name) is not None and not isinstance(config[name], str):
            raise ConfigError(f"inference_table_config.{name} is a name, not {config[name]!r}.")
    return InferenceTable(**{"max_payload_bytes": MAX_PAYLOAD_BYTES, **config})


class PayloadRow(NamedTuple):
    request_id: str
    client_request_id: str | None
    date: str  # YYYY-MM-DD
    timestamp_ms: int
    status_code: int
    execution_time_ms: float | None
    request: str | bytes | None  # JSON (sealed when a key is configured); NULL over the cap or for a refusal
    response: str | bytes | None
    served_entity_id: str
    logging_error_codes: str | None  # JSON list, e.g. ["MAX_REQUEST_SIZE_EXCEEDED"]
    requester: str | None
    endpoint: str
    origin: str | None  # sql | pandas | job | rest
    input_tokens: int | None
    output_tokens: int | None


_SCHEMA = """
CREATE TABLE IF NOT EXISTS payloads (
    request_id TEXT NOT NULL, client_request_id TEXT, date TEXT NOT NULL, timestamp_ms INTEGER NOT NULL,
    status_code INTEGER NOT NULL, execution_time_ms REAL, request TEXT, response TEXT,
    served_entity_id TEXT NOT NULL, logging_error_codes TEXT, requester TEXT, endpoint TEXT NOT NULL,
    origin TEXT, input_tokens INTEGER, output_tokens INTEGER
);
CREATE INDEX IF NOT EXISTS payloads_by_time ON payloads(endpoint, timestamp_ms);
CREATE INDEX IF NOT EXISTS payloads_by_request ON payloads(request_id);
"""
_COLUMNS = ", ".join(PayloadRow._fields)
_INSERT = f"INSERT INTO payloads ({_COLUMNS}) VALUES ({', '.join('?' * len(PayloadRow._fields))})"
# The shared database keeps payloads as bytes, `sealed` saying which are sealed (1: request, 2: response).
_INSERT_SHARED = (
    f"INSERT INTO payloads ({_COLUMNS}, sealed) VALUES ({', '.join('?' * (len(PayloadRow._fields) + 1))})"
    " ON CONFLICT (request_id) DO NOTHING"
)


def capped(text: str | None, limit: int, code: str, codes: list[str]) -> str | None:
    """`text`, or None with `code` noted when it is over `limit` bytes."""
    if text is not None and len(text.encode()) > limit:
        codes.append(code)
        return None
    return text


def now_ms() -> int:
    return int(time.time() * 1000)


_days: dict[int, str] = {}


def day(timestamp_ms: int) -> str:
    number = timestamp_ms // 86_400_000
    found = _days.get(number)
    if found is None:
        if len(_days) > 64:
            _days.clear()
        found = _days[number] = datetime.fromtimestamp(number * 86_400, UTC).strftime("%Y-%m-%d")
    return found


class PayloadLog:
    """Buffered rows per file, journaled, one writer thread, pruning by each endpoint's retention."""

    def __init__(self) -> None:
        self._pending: list[tuple[Path, PayloadRow, int | None]] = []
        self._journals: dict[Path, Journal] = {}
        self._lock = threading.Lock()
        self._writing = threading.Lock()
        self._wake = threading.Event()
        self._pruned: dict[tuple[Path, str], float] = {}
        self._replayed: dict[Path, float] = {}
        self._thread: threading.Thread | None = None
        atexit.register(self.close)
        alive = weakref.ref(self)

        def reset_in_child() -> None:
            log = alive()
            if log is not None:
                log._lock, log._pending, log._thread, log._journals = threading.Lock(), [], None, {}
                log._wake = threading.Event()

        after_fork_in_child(reset_in_child)
        held_across_fork(self, lambda log: log._writing)

    def record(self, path: Path, row: PayloadRow, table: InferenceTable) -> None:
        row = sealed(
            row
        )  # sealed before it is queued: not even the buffer holds it in clear longer than needed
        with self._lock:
            journal = self._journals.get(path)
            if journal is None:
                journal = self._journals[path] = Journal(path.parent, "payloads")
            journal.append([{"path": path.name, "days": table.retention_days, "row": row._asdict()}])
            self._pending.append((path, row, table.retention_days))
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="aifuncs-payloads", daemon=True)
                self._thread.start()
        if table.sync and self._writing.acquire(blocking=False):  # else the writer is at it already
            try:
                self._flush(_SYNC_WAIT_S)
            except Exception as error:
                if not (isinstance(error, sqlite3.OperationalError) or database_failing(error)):
                    raise
                self._wake.set()  # locked or away: journaled, and written as soon as the store can be
            finally:
                self._writing.release()

    def _run(self) -> None:
        while True:
            self._wake.wait(FLUSH_EVERY_S)
            self._wake.clear()
            try:
                self.flush()
                for path in list(self._journals):
                    if time.monotonic() - self._replayed.get(path, -_REPLAY_EVERY_S) >= _REPLAY_EVERY_S:
                        self.replay(path)
            except Exception as error:  # kept pending for the next write; logging must not fail a query
                _log.warning("inference table: cannot write (kept for the next write): %s", error)

    def flush(self, wait_s: float = LOCK_WAIT_S) -> None:
        with self._writing:
            self._flush(wait_s)

    def _flush(self, wait_s: float) -> None:
        with self._lock:
            rows, self._pending = self._pending, []
        if not rows:
            return
        written: set[Path] = set()
        try:
            for path in dict.fromkeys(p for p, _, _ in rows):
                batch = [r for p, r, _ in rows if p == path]
                retention = {(r.endpoint, days) for p, r, days in rows if p == path}
                database = shared(path)
                if database is not None:
                    self._write_shared(database, path, batch, retention, wait_s)
                    written.add(path)
                    continue
                db = connect(path, wait_s)
                try:
                    with db:
                        db.executemany(_INSERT, batch)
                        self._prune(db, path, retention)
                finally:
                    db.close()
                written.add(path)
        except BaseException:
            with self._lock:
                self._pending[:0] = [x for x in rows if x[0] not in written]
            raise
        finally:
            with self._lock:  # journals whose rows are all written are emptied; a long one keeps what is owed
                for path in written:
                    owed = [
                        {"path": p.name, "days": d, "row": r._asdict()}
                        for p, r, d in self._pending
                        if p == path
                    ]
                    journal = self._journals.get(path)
                    if journal is not None and (not owed or journal.size > _COMPACT_BYTES):
                        journal.rewrite(owed)

    def replay(self, path: Path, wait_s: float = LOCK_WAIT_S) -> int:
        """Write the rows of dead processes' journals (beside `path`) not written yet; returns how many."""
        self._replayed[path] = time.monotonic()
        with dead_journals(path.parent, "payloads") as lines:
            rows = {
                str(line["row"].get("request_id")): PayloadRow(
                    **{name: line["row"].get(name) for name in PayloadRow._fields}
                )
                for line in lines
                if line.get("path") == path.name and isinstance(line.get("row"), dict)
            }
            if not rows:
                return 0
            database = shared(path)
            if database is not None:
                return self._write_shared(database, path, list(rows.values()), set(), wait_s)
            db = connect(path, wait_s)
            try:
                with db:
                    before = db.total_changes
                    db.executemany(
                        f"INSERT INTO payloads ({_COLUMNS}) SELECT {', '.join('?' * len(PayloadRow._fields))}"
                        " WHERE NOT EXISTS (SELECT 1 FROM payloads WHERE request_id = ?)",
                        [(*row, key) for key, row in rows.items()],
                    )
                    return db.total_changes - before
            finally:
                db.close()

    def close(self) -> None:
        """At exit: write what is pending, briefly (what a locked file keeps out stays in the journal)."""
        try:
            self.flush(_EXIT_WAIT_S)
        except Exception as error:
            _log.warning("inference table: rows not written at exit are kept in its journal: %s", error)
            return
        with self._lock:
            for journal in self._journals.values():
                journal.close(remove=True)

    def _write_shared(
        self,
        database: Postgres,
        path: Path,
        rows: list[PayloadRow],
        retention: set[tuple[str, int | None]],
        wait_s: float,
    ) -> int:
        """Insert the rows the shared database lacks (by request id), in one transaction; how many were new."""
        with database.transaction(None, wait_s=wait_s) as db:
            added = int(db.executemany(_INSERT_SHARED, [stored(row) for row in rows]).rowcount) if rows else 0
            self._prune(db, path, retention)
        return added

    def _prune(self, db: Connection, path: Path, retention: set[tuple[str, int | None]]) -> None:
        for endpoint, days in retention:
            if (
                days is None
                or time.monotonic() - self._pruned.get((path, endpoint), -_PRUNE_EVERY_S) < _PRUNE_EVERY_S
            ):
                continue
            cutoff = int((datetime.now(UTC) - timedelta(days=days)).timestamp() * 1000)
            db.execute("DELETE FROM payloads WHERE endpoint = ? AND timestamp_ms < ?", (endpoint, cutoff))
            self._pruned[(path, endpoint)] = time.monotonic()

    def read(self, path: Path) -> list[dict[str, Any]]:
        """Every row, its payloads opened (EncryptionError if sealed ones do not open with the key set)."""
        self.flush()
        try:
            self.replay(path)
        except Exception as error:  # locked or away: the next reader or write replays it
            if not (isinstance(error, sqlite3.OperationalError) or database_failing(error)):
                raise
        rows = read_rows(path)
        ring = keyring()
        for row in rows:
            for column in ("request", "response"):
                value = row[column]
                if isinstance(value, bytes):
                    if ring is None:
                        raise EncryptionError(
                            "The inference table's payloads were encrypted and no key is configured: set"
                            " AIFUNCS_ENCRYPTION_KEY (or AIFUNCS_ENCRYPTION_KEY_FILE) to the key."
                        )
                    row[column] = ring.open(value, payload_aad(row, column)).decode()
        return rows


def record_refusal(path: Path, table: InferenceTable, endpoint: str, requester: str | None, status_code: int,
                   origin: str | None = None, client_request_id: str | None = None) -> None:  # fmt: skip
    """A request refused before it was sent (403 by the policy, 429 by a rate limit), as metadata."""
    if not table.enabled:
        return
    stamp = now_ms()
    row = PayloadRow(uuid.uuid4().hex, client_request_id, day(stamp), stamp, status_code, None, None, None,
                     endpoint, None, requester, endpoint, origin, None, None)  # fmt: skip
    payload_log().record(path, row, table)


def payload_aad(row: dict[str, Any] | PayloadRow, column: str) -> bytes:
    """What a sealed payload is bound to: its row, endpoint, requester and column."""
    get = row.get if isinstance(row, dict) else row._asdict().get
    return "|".join(
        ["payloads", str(get("request_id")), str(get("endpoint")), str(get("requester")), column]
    ).encode()


def sealed(row: PayloadRow) -> PayloadRow:
    """The row with its payloads sealed, when a key is configured."""
    ring = keyring()
    if ring is None:
        return row
    request, response = row.request, row.response
    if isinstance(request, str):
        request = ring.seal(request.encode(), payload_aad(row, "request"))
    if isinstance(response, str):
        response = ring.seal(response.encode(), payload_aad(row, "response"))
    return row._replace(request=request, response=response)


def stored(row: PayloadRow) -> tuple[Any, ...]:
    """The row as the shared database keeps it: payloads as bytes, and which of them are sealed."""
    flags, payloads = 0, []
    for bit, value in ((1, row.request), (2, row.response)):
        if isinstance(value, bytes):
            flags |= bit
        payloads.append(value.encode() if isinstance(value, str) else value)
    return (*row._replace(request=payloads[0], response=payloads[1]), flags)


def loaded(found: dict[str, Any]) -> dict[str, Any]:
    """A row of the shared database as the SQLite file has it: a text payload as text, a sealed one as bytes."""
    flags = found.pop("sealed")
    for bit, column in ((1, "request"), (2, "response")):
        value = found[column]
        if value is not None:
            found[column] = bytes(value) if flags & bit else bytes(value).decode()
    return found


def read_rows(path: Path) -> list[dict[str, Any]]:
    """Every row as stored (sealed payloads still sealed), oldest first: the file's, or every host's."""
    database = shared(path)
    if database is not None:
        found = database.reader().execute(
            f"SELECT {_COLUMNS}, sealed FROM payloads ORDER BY timestamp_ms, request_id"
        )
        names = [*PayloadRow._fields, "sealed"]
        return [loaded(dict(zip(names, r, strict=True))) for r in found.fetchall()]
    if not path.exists():
        return []
    db = connect(path)
    try:
        db.row_factory = sqlite3.Row
        return [dict(r) for r in db.execute(f"SELECT {_COLUMNS} FROM payloads ORDER BY timestamp_ms")]
    finally:
        db.close()


def connect(path: Path, wait_s: float = 30.0) -> sqlite3.Connection:
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(private_file(path), timeout=wait_s)
    try:
        use_wal(db, wait_s)
        db.executescript(_SCHEMA)
    except BaseException:
        db.close()
        raise
    return db


_log_instance: PayloadLog | None = None
_instance_lock = threading.Lock()
renewed_in_child(globals(), "_instance_lock")  # a fork while another thread held it must not freeze the child


def payload_log() -> PayloadLog:
    """The process's one payload writer (the runtime and the catalog's refusals share it)."""
    global _log_instance
    with _instance_lock:
        if _log_instance is None:
            _log_instance = PayloadLog()
        return _log_instance
