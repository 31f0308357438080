"""What the command groups share: exit codes, a DuckDB connection for the CLI, the SQL text, spending limits
and the shared database's option."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

import duckdb

from aifuncs.errors import AifuncsError

if TYPE_CHECKING:
    from aifuncs.session import SpendingLimits

EXIT_ERROR = 1
EXIT_USAGE = 2  # as argparse: the command line itself is wrong
EXIT_BUDGET = 3  # a budget refused or stopped the query: a scheduler may retry with a larger one
EXIT_LOCKED = (
    7  # another run of the same job is running (the other codes of `aifuncs run`: aifuncs.jobs.Exit)
)
EXIT_UNACCOUNTED = 9  # `aifuncs query` answered, but a locked log could not take its rows yet


def connect(database: str) -> duckdb.DuckDBPyConnection:
    from aifuncs.engines.duckdb import connect

    con = connect(database)
    # DuckDB draws its own progress bar on stdout for long queries, in the middle of CSV or JSON output;
    # aifuncs' progress line goes to stderr instead.
    con.execute("SET enable_progress_bar = false")
    return con


def sql_text(args: argparse.Namespace) -> str:
    text: str | None = open(args.file).read() if args.file else args.sql
    if not text:
        raise AifuncsError("Give the SQL as an argument or with --file PATH.")
    return text


def spending_limits(args: argparse.Namespace) -> SpendingLimits:
    """--max-requests, --max-tokens and --max-cost as the options object the engines take."""
    from aifuncs.session import SpendingLimits

    return SpendingLimits(args.max_requests, args.max_tokens, args.max_cost)


def database_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--database-url",
        metavar="URL",
        help="the shared database for the catalog and governance (postgresql://...; default: AIFUNCS_DATABASE_URL,"
        " else SQLite files under AIFUNCS_HOME). A password here shows in the process list: prefer the variable,"
        " PGPASSWORD or ~/.pgpass",
    )


def reach_database() -> None:
    """Fail at start, with the URL shown without its password, when the shared database cannot be used."""
    from aifuncs._home import home_file
    from aifuncs.storage import shared

    database = shared(home_file("catalog.db"))
    if database is not None:
        database.pool()
