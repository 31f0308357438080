"""The storage seam: every store that must be one truth across processes (the catalog, principals, tokens,
grants, secrets, egress, audit, limits, usage, inference tables) reaches its database through here. Unset `AIFUNCS_DATABASE_URL`: SQLite files
under AIFUNCS_HOME, as ever. Set to `postgresql://...`: one PostgreSQL database shared by every server, job and
Spark executor that names it, its schema made and migrated by numbered files (migrations/).

The stores write their SQL once, in the dialect both take (`?` placeholders, `INSERT ... ON CONFLICT`,
`RETURNING`); a store's file under AIFUNCS_HOME names which tables it means (`catalog.db`: the catalog and
governance tables)."""

from __future__ import annotations

from pathlib import Path

from aifuncs.errors import ConfigError
from aifuncs.storage._connection import Connection
from aifuncs.storage._faults import database_failing
from aifuncs.storage._postgres import PgConnection, Postgres, Row, forget, postgres
from aifuncs.storage._url import ENV, database_url, is_postgres, redact

__all__ = [
    "ENV",
    "Connection",
    "SHARED_FILES",
    "PgConnection",
    "Postgres",
    "Row",
    "database_failing",
    "database_url",
    "forget",
    "postgres",
    "redact",
    "shared",
]

# The stores' SQLite files whose tables move to the shared database when one is set (limits.db: the rate
# limiter's buckets; usage.db: usage and its rollups; payloads.db: the inference tables). The rest stay per host
# for now (answers, the run ledger, keys.db, ui.db); so do the journals of rows not written yet.
SHARED_FILES = frozenset({"catalog.db", "limits.db", "usage.db", "payloads.db"})


def shared(path: Path) -> Postgres | None:
    """The shared database that holds what `path` (a store's SQLite file) would, or None: the file itself."""
    url = database_url()
    if url is None or path.name not in SHARED_FILES:
        return None
    if not is_postgres(url):
        raise ConfigError(
            f"AIFUNCS_DATABASE_URL must be a postgresql:// URL, not {redact(url)!r}; unset it to keep the"
            " stores in SQLite files under AIFUNCS_HOME."
        )
    return postgres(url)
