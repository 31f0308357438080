"""The stores on PostgreSQL: one pool per process and URL, connections that take the stores' SQL as written
for SQLite (`?` placeholders, rows read by position or by name), write transactions serialized per store as
SQLite serializes writers of one file (an advisory lock held to the commit), migrations on first use."""

from __future__ import annotations

import contextlib
import os
import threading
import zlib
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from aifuncs._fork import ProcessLocal
from aifuncs.errors import DatabaseUnreachable, MissingDependency
from aifuncs.storage._migrate import migrate
from aifuncs.storage._sql import to_postgres
from aifuncs.storage._url import redact, scrub

__all__ = ["PgConnection", "Postgres", "Row", "forget", "postgres"]

CONNECT_TIMEOUT_S = 5
POOL_SIZE = 8
LOCK_TIMEOUT_S = 30  # as SQLite's busy timeout in the stores
POOL_WAIT_S = 10  # a transaction waits this long for a connection (the database away: then an error, a 503)


def _driver() -> Any:
    try:
        import psycopg
        import psycopg_pool
    except ImportError as error:  # the optional extra
        raise MissingDependency(
            "AIFUNCS_DATABASE_URL names a PostgreSQL database, which needs psycopg: pip install 'aifuncs[postgres]'"
        ) from error
    return psycopg, psycopg_pool


class Row(tuple[Any, ...]):
    """A row read by position (`row[0]`) or by column name (`row["name"]`), as sqlite3.Row is."""

    _names: dict[str, int]

    def __new__(cls, values: Sequence[Any], names: dict[str, int]) -> Row:
        row = super().__new__(cls, values)
        row._names = names
        return row

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, str):
            return super().__getitem__(self._names[key])
        return super().__getitem__(key)

    def keys(self) -> list[str]:
        return list(self._names)


def _rows(cursor: Any) -> Any:
    names = {column.name: i for i, column in enumerate(cursor.description or ())}
    return lambda values: Row(values, names)


_WRITES = ("INSERT", "UPDATE", "DELETE")


class PgConnection:
    """A psycopg connection spoken to as the stores speak to sqlite3's: execute, executemany, rows by name.
    Inside a store's transaction its first write waits for the store's turn, as a SQLite transaction takes the
    file's write lock at its first write: reads never wait, and a write never interleaves with another's."""

    def __init__(self, conn: Any, store: str | None = None) -> None:
        self.raw = conn
        self.store = store
        self._turn = store is None

    def take_turn(self) -> None:
        """Wait for the store's writers' turn now (before a read the write depends on): BEGIN IMMEDIATE."""
        if not self._turn and self.store is not None:
            self.raw.execute("SELECT pg_advisory_xact_lock(%s)", (lock_key(self.store),))
            self._turn = True

    def execute(self, sql: str, params: Sequence[Any] = (), /) -> Any:
        if not self._turn and sql.lstrip()[:6].upper() in _WRITES:
            self.take_turn()
        cursor = self.raw.cursor(row_factory=_rows)
        cursor.execute(to_postgres(sql), tuple(params))
        return cursor

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]], /) -> Any:
        if not self._turn and sql.lstrip()[:6].upper() in _WRITES:
            self.take_turn()
        cursor = self.raw.cursor(row_factory=_rows)
        batch = [tuple(r) for r in rows]
        if batch:
            cursor.executemany(to_postgres(sql), batch)
        return cursor


class _Reader(PgConnection):
    """A thread's kept autocommit connection for reads. After the database restarted, its first read finds the
    connection broken: a read changes nothing, so it is sent once more on a new connection rather than failed."""

    def __init__(self, database: Postgres) -> None:
        super().__init__(database.connect())
        self._database = database

    def execute(self, sql: str, params: Sequence[Any] = (), /) -> Any:
        psycopg, _ = _driver()
        try:
            return super().execute(sql, params)
        except psycopg.OperationalError:
            if not (self.raw.closed or self.raw.broken):
                raise  # the server answered (a timeout, a lock): not a lost connection
            self.raw.close()
            self.raw = self._database.connect()
            return super().execute(sql, params)


def lock_key(name: str) -> int:
    """An advisory lock's key for a store's name (stable across processes and versions)."""
    return 0x61696675_0000_0000 | zlib.crc32(name.encode())


class Postgres:
    """One PostgreSQL database, as this process uses it."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._lock = threading.Lock()
        self._pool: Any = None
        self._readers = ProcessLocal()
        self._kept: list[PgConnection] = []  # every thread's reader, closed with the handle

    def __repr__(self) -> str:
        return f"Postgres({redact(self.url)!r})"

    def _unreachable(self, error: BaseException) -> DatabaseUnreachable:
        reason = scrub(
            str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__, self.url
        )
        return DatabaseUnreachable(
            f"Cannot use the database {redact(self.url)}: {reason}. Check AIFUNCS_DATABASE_URL (or --database-url):"
            " the server's address, the user and password, and that the database exists."
        )

    def connect(self) -> Any:
        """A new connection of this process's own (autocommit), the schema migrated the first time."""
        psycopg, _ = _driver()
        try:
            return psycopg.connect(
                self.url,
                autocommit=True,
                connect_timeout=CONNECT_TIMEOUT_S,
                cursor_factory=psycopg.ClientCursor,
            )
        except (psycopg.Error, ValueError) as error:
            raise self._unreachable(error) from None

    def pool(self) -> Any:
        if self._pool is not None:
            return self._pool
        with self._lock:
            if self._pool is None:
                psycopg, psycopg_pool = _driver()
                first = self.connect()
                try:
                    migrate(first)
                except psycopg.Error as error:
                    raise self._unreachable(error) from None
                finally:
                    first.close()
                self._pool = psycopg_pool.ConnectionPool(
                    self.url,
                    min_size=1,
                    max_size=POOL_SIZE,
                    kwargs={
                        "autocommit": True,
                        "connect_timeout": CONNECT_TIMEOUT_S,
                        "cursor_factory": psycopg.ClientCursor,
                    },
                    open=True,
                    timeout=POOL_WAIT_S,
                    name="aifuncs",
                )
        return self._pool

    @contextlib.contextmanager
    def transaction(
        self, store: str | None, *, immediate: bool = False, wait_s: float | None = None
    ) -> Iterator[PgConnection]:
        """One transaction: committed when the block ends, rolled back if it raises. With `store`, its writers
        take turns from their first write on, or from the start when `immediate` (BEGIN IMMEDIATE). A turn
        waited for longer than SQLite's busy timeout is an error, not a hang; so is a connection waited for
        longer than `wait_s` (POOL_WAIT_S unless given: the database away)."""
        with self.pool().connection(timeout=wait_s) as conn, conn.transaction():
            conn.execute(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT_S}s'")  # a constant, never a user's value
            db = PgConnection(conn, store)
            if immediate:
                db.take_turn()
            yield db

    @contextlib.contextmanager
    def try_transaction(self, store: str) -> Iterator[PgConnection | None]:
        """A transaction if `store`'s writers' turn is free at once, else None (a write that may be skipped)."""
        with self.pool().connection() as conn, conn.transaction():
            got = conn.execute("SELECT pg_try_advisory_xact_lock(%s)", (lock_key(store),)).fetchone()
            yield PgConnection(conn) if got and got[0] else None

    def reader(self) -> PgConnection:
        """A kept connection for this thread's reads (autocommit: each read sees what others committed)."""
        values = self._readers.values
        kept: PgConnection | None = getattr(values, "conn", None)
        if kept is not None and not kept.raw.closed:
            return kept  # a broken one reconnects on its next read
        self.pool()  # the schema in place before the first read
        values.conn = _Reader(self)
        with self._lock:
            self._kept.append(values.conn)
        return values.conn

    def close(self) -> None:
        with self._lock:
            kept, self._kept = self._kept, []
            pool, self._pool = self._pool, None
        for reader in kept:
            reader.raw.close()
        if pool is not None:
            pool.close()


_open: dict[tuple[int, str], Postgres] = {}
_open_lock = threading.Lock()


def postgres(url: str) -> Postgres:
    """This process's handle on the database at `url` (a forked child makes its own)."""
    key = (os.getpid(), url)
    found = _open.get(key)
    if found is None:
        with _open_lock:
            found = _open.setdefault(key, Postgres(url))
    return found


def forget(url: str) -> None:
    """Close this process's handle on `url` (its pool and readers): the database is going away."""
    with _open_lock:
        found = _open.pop((os.getpid(), url), None)
    if found is not None:
        found.close()
