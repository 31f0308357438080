"""Which failures are the shared database's passing trouble (away, restarting, a statement or lock timeout):
a request that meets one is answered 503 with Retry-After, and a buffered row waits for the next write."""

from __future__ import annotations

import sys

from aifuncs.errors import DatabaseUnreachable

__all__ = ["database_failing"]


def database_failing(error: BaseException) -> bool:
    if isinstance(error, DatabaseUnreachable):
        return True
    psycopg = sys.modules.get("psycopg")  # never imported here: a process without a database has no driver
    return psycopg is not None and isinstance(error, psycopg.OperationalError)
