"""The answer store: model answers kept under AIFUNCS_HOME (`answers.db`), keyed by call and request.

It serves two purposes with one table. The *cache*: a deterministic call (a tabular model, an LLM at
temperature 0) asked the same question again, in this query or a later one, is answered from here.
*Resumption*: answers are written as each request completes, before the query goes on, so a query
killed half-way and run again only sends the requests that had no answer yet.

Writes go through one writer thread that commits whatever has queued up in one transaction, so many
requests finishing together cost one commit and the event loop never waits on the disk. A request's
answers count as stored only once their commit is done. Failures are never stored.
"""

from __future__ import annotations

import asyncio
import queue
import sqlite3
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import duckdb
import pyarrow as pa

from aifuncs._fork import held_across_fork
from aifuncs._home import private_file
from aifuncs._wal import use_wal
from aifuncs.governance.keys import EncryptionError, KeyRing, keyring
from aifuncs.runtime._distinct import to_json_texts

_SCHEMA = """
CREATE TABLE IF NOT EXISTS answers (
    key BLOB PRIMARY KEY,
    endpoint TEXT NOT NULL,
    value TEXT NOT NULL,
    created REAL NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS answers_by_endpoint ON answers(endpoint);
"""
_LOOKUP_CHUNK = 500  # keys per SELECT ... IN (...): under SQLite's variable limit


@dataclass(frozen=True)
class StoreStats:
    path: Path
    answers: int
    endpoints: dict[str, int]
    bytes: int


class AnswerStore:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._local = threading.local()
        self._writes: queue.SimpleQueue[_Write | None] = queue.SimpleQueue()
        self._writer: threading.Thread | None = None
        self._lock = threading.Lock()
        self._readers: list[sqlite3.Connection] = []
        self._generation = 0
        self._committing = threading.Lock()  # held by the writer while it works in DuckDB and SQLite
        held_across_fork(self, lambda store: store._committing)

    def lookup(self, keys: Sequence[bytes]) -> dict[bytes, str]:
        """The stored answers among `keys`, as the JSON text they were stored as (opened, if sealed)."""
        found: dict[bytes, str] = {}
        db = self._reader()
        ring = keyring()
        for start in range(0, len(keys), _LOOKUP_CHUNK):
            chunk = keys[start : start + _LOOKUP_CHUNK]
            marks = ",".join("?" * len(chunk))
            rows = db.execute(
                f"SELECT key, endpoint, value FROM answers WHERE key IN ({marks})", chunk
            ).fetchall()
            for key, endpoint, value in rows:
                found[key] = _opened(ring, key, endpoint, value)
        return found

    async def put(self, endpoint: str, keys: Sequence[bytes], values: pa.Array) -> None:
        """Store answers, one per key; returns once they are committed (they survive the process being
        killed). The writer thread turns them into their stored JSON text, all that has queued at once:
        one DuckDB conversion per commit rather than one per request (~2 ms each)."""
        if not keys:
            return
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        self._start_writer()
        self._writes.put(_Write(endpoint, list(keys), values, loop, done))
        await done

    def stats(self) -> StoreStats:
        if not self.path.exists():
            return StoreStats(self.path, 0, {}, 0)
        db = self._reader()
        endpoints = dict(db.execute("SELECT endpoint, count(*) FROM answers GROUP BY endpoint ORDER BY 1"))
        size = sum(p.stat().st_size for p in self.path.parent.glob(self.path.name + "*") if p.is_file())
        return StoreStats(self.path, sum(endpoints.values()), endpoints, size)

    def clear(self, endpoint: str | None = None) -> int:
        """Forget stored answers (of one endpoint, or all); returns how many."""
        db = _connect(self.path)
        try:
            with db:
                if endpoint is None:
                    return db.execute("DELETE FROM answers").rowcount
                return db.execute("DELETE FROM answers WHERE endpoint = ?", (endpoint,)).rowcount
        finally:
            db.close()

    def close(self) -> None:
        """Stop the writer (after what is queued) and close the readers: a job's checkpoint is done with."""
        with self._lock:
            if self._writer is not None:
                self._writes.put(None)
                self._writer.join(timeout=30)
                self._writer = None
            readers, self._readers = self._readers, []
            self._generation += 1  # a thread's reader from before is not used again
        for db in readers:
            db.close()

    def _reader(self) -> sqlite3.Connection:
        # One connection per thread: DuckDB calls UDFs from several threads at once.
        db: sqlite3.Connection | None = getattr(self._local, "db", None)
        if db is None or getattr(self._local, "generation", None) != self._generation:
            db = self._local.db = _connect(self.path)
            with self._lock:
                self._local.generation = self._generation
                self._readers.append(db)
        return db

    def _start_writer(self) -> None:
        with self._lock:
            if self._writer is None or not self._writer.is_alive():
                self._writer = threading.Thread(target=self._write_loop, name="aifuncs-store", daemon=True)
                self._writer.start()

    def _write_loop(self) -> None:
        db = _connect(self.path)
        try:
            while True:
                first = self._writes.get()
                if first is None:
                    return
                batch = [first]
                while True:  # everything queued meanwhile goes into the same transaction
                    try:
                        more = self._writes.get_nowait()
                    except queue.Empty:
                        break
                    if more is None:
                        self._writes.put(None)
                        break
                    batch.append(more)
                error: BaseException | None = None
                try:
                    with self._committing:
                        rows = _rows(batch, time.time(), keyring())
                        with db:
                            db.executemany("INSERT OR REPLACE INTO answers VALUES (?, ?, ?, ?)", rows)
                except (sqlite3.Error, duckdb.Error, pa.ArrowException, EncryptionError) as failure:
                    error = failure
                for write in batch:
                    write.finish(error)
        finally:
            db.close()


@dataclass
class _Write:
    endpoint: str
    keys: list[bytes]
    values: pa.Array
    loop: asyncio.AbstractEventLoop
    done: asyncio.Future[None]

    def finish(self, error: BaseException | None) -> None:
        def settle() -> None:
            if self.done.done():
                return
            if error is None:
                self.done.set_result(None)
            else:
                self.done.set_exception(error)

        if not self.loop.is_closed():
            self.loop.call_soon_threadsafe(settle)


def _aad(key: bytes, endpoint: str) -> bytes:
    # the answer's key already names its call, endpoint version and principal: bound, a value cannot move
    return b"answers|" + key + b"|" + endpoint.encode()


def _opened(ring: KeyRing | None, key: bytes, endpoint: str, value: str | bytes) -> str:
    if isinstance(value, str):
        return value
    if ring is None:
        raise EncryptionError(
            "Kept answers were encrypted and no key is configured: set AIFUNCS_ENCRYPTION_KEY (or"
            " AIFUNCS_ENCRYPTION_KEY_FILE) to the key, or clear them (aifuncs cache clear)."
        )
    return ring.open(value, _aad(key, endpoint)).decode()


def _rows(
    batch: list[_Write], now: float, ring: KeyRing | None = None
) -> list[tuple[bytes, str, str | bytes, float]]:
    """The answers of the queued writes as table rows, converted to JSON one value type at a time, and
    sealed when a key is configured."""
    by_type: dict[pa.DataType, list[_Write]] = {}
    for write in batch:
        by_type.setdefault(write.values.type, []).append(write)
    rows = []
    for writes in by_type.values():
        values = writes[0].values if len(writes) == 1 else pa.concat_arrays([w.values for w in writes])
        texts = iter(to_json_texts(values).to_pylist())
        for write in writes:
            if ring is None:
                rows += [(key, write.endpoint, next(texts), now) for key in write.keys]
            else:
                rows += [
                    (key, write.endpoint, ring.seal(next(texts).encode(), _aad(key, write.endpoint)), now)
                    for key in write.keys
                ]
    return rows


def _connect(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(private_file(path), timeout=30, check_same_thread=False)
    use_wal(db)
    db.execute("PRAGMA synchronous=NORMAL")  # a commit survives a killed process; WAL keeps it consistent
    # Keys are hashes, so inserts land all over the B-tree: past SQLite's 2 MB default page cache every
    # commit of a large store read its pages back from the file.
    db.execute("PRAGMA cache_size = -65536")  # KiB
    db.executescript(_SCHEMA)
    return db
