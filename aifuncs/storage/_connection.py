"""What a store may do with a connection, whichever backend holds it: sqlite3's connections and PgConnection
both are one."""

from __future__ import annotations

from typing import Any, Protocol

__all__ = ["Connection"]


class Connection(Protocol):
    def execute(self, sql: str, parameters: Any = ..., /) -> Any: ...

    def executemany(self, sql: str, parameters: Any, /) -> Any: ...
