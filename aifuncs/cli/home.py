"""`aifuncs home migrate --to postgresql://...`: a home's SQLite stores copied into a shared database, checked
table by table; safe to run again (a second run copies 0 and checks again)."""

from __future__ import annotations

import argparse
import os
from typing import Any

from aifuncs.errors import ConfigError

__all__ = ["add_commands"]


def _migrate(args: argparse.Namespace) -> int:
    from aifuncs._home import home
    from aifuncs.cli._home_copy import copy_home
    from aifuncs.storage import ENV, Postgres, is_postgres, redact

    url = args.to or os.environ.get(ENV)
    if not url or not is_postgres(url):
        shown = redact(url) if url else "nothing"
        raise ConfigError(
            f"aifuncs home migrate --to takes the database's postgresql:// URL (or AIFUNCS_DATABASE_URL), not"
            f" {shown}; e.g. --to postgresql://aifuncs@db.internal:5432/aifuncs with PGPASSWORD set."
        )
    source = home()
    if not (source / "catalog.db").exists():
        raise ConfigError(f"{source} holds no catalog.db: set AIFUNCS_HOME to the home to migrate.")
    if os.environ.get(ENV) is None:  # rows a dead process left in its journal go to the home's files first
        from aifuncs.governance.payloads import payload_log
        from aifuncs.runtime._usage import UsageLog

        UsageLog().replay(source / "usage.db")
        payload_log().replay(source / "payloads.db")
    database = Postgres(url)
    try:
        copied = copy_home(source, database)
    finally:
        database.close()
    print(f"{source} -> {redact(url)}")
    print(f"{'table':<20}{'in home':>10}{'copied':>10}{'in database':>14}")
    for row in copied:
        print(f"{row.table:<20}{row.source:>10}{row.copied:>10}{row.present:>14}")
    short = [row.table for row in copied if row.present != row.source]
    if short:
        raise ConfigError(f"Rows of {', '.join(short)} are not in the database after the copy; run it again.")
    print(f"verified: all {sum(r.source for r in copied)} rows of the home are in the database.")
    print(
        "Data keys stay in this home's keys.db: give every host the same AIFUNCS_ENCRYPTION_KEY and keys.db so"
        " that sealed secrets and payloads open there. Rate limit buckets start full on the database."
    )
    return 0


def add_commands(commands: Any) -> None:
    """Register `home migrate` on the main parser's subparsers."""
    home = commands.add_parser("home", help="the home's stores: copy them into a shared database")
    actions = home.add_subparsers(dest="action", required=True)
    migrate = actions.add_parser(
        "migrate",
        help="copy this home (AIFUNCS_HOME) into a PostgreSQL database, verify counts per table; idempotent",
    )
    migrate.add_argument(
        "--to",
        metavar="URL",
        help="the database (postgresql://...; default: AIFUNCS_DATABASE_URL). A password here shows in the"
        " process list: prefer PGPASSWORD or ~/.pgpass",
    )
    migrate.set_defaults(handler=_migrate)
