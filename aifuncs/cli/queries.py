"""`aifuncs query`, `aifuncs explain` and `aifuncs index`: SQL with AI functions on a DuckDB database."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from aifuncs.cli._common import EXIT_UNACCOUNTED, connect, spending_limits, sql_text


def _query(args: argparse.Namespace) -> int:
    from aifuncs.engines.duckdb import returns_rows, sql_each

    if args.no_cache:
        os.environ["AIFUNCS_CACHE"] = "off"  # this process only: read the runtime's switch

    text = sql_text(args)
    budget = spending_limits(args).budget()
    con = connect(args.db)
    try:
        progress = False if args.no_progress else None  # None: on a terminal only
        for statement, relation in sql_each(
            con, text, dialect=args.dialect, budget=budget, progress=progress
        ):
            if relation is None or not returns_rows(statement):
                continue
            if args.format == "csv":
                relation.to_df().to_csv(sys.stdout, index=False)
            elif args.format == "json":
                print(relation.to_df().to_json(orient="records", date_format="iso"))
            else:
                relation.show(max_rows=args.max_rows, max_width=200)
    finally:
        con.close()
    return _accounted()


# How long `aifuncs query` waits at its end for the usage and inference logs to take its rows (a locked file
# used to hold the exit for a minute); what they cannot take by then stays in their journals.
ACCOUNTING_WAIT_S = 2.0


def _accounted() -> int:
    """Write the query's usage and inference rows, waiting `ACCOUNTING_WAIT_S` at most, and say so when a log
    could not take them: EXIT_UNACCOUNTED (9, not a jobs.Exit code), the answers having been given and paid for."""
    import sqlite3

    from aifuncs.governance.payloads import payload_log
    from aifuncs.runtime import default_runtime

    unwritten = []
    for name, log in (("usage log", default_runtime().usage), ("inference table", payload_log())):
        try:
            log.flush(ACCOUNTING_WAIT_S)
        except (sqlite3.Error, OSError) as error:
            unwritten.append(f"{name} ({error})")
    if not unwritten:
        return 0
    print(
        f"warning: the answers above were paid for, but the {' and the '.join(unwritten)} could not take this"
        f" query's rows within {ACCOUNTING_WAIT_S:g} s (another process holds the file). They are kept in the"
        " log's journal under AIFUNCS_HOME and written by the next aifuncs process that writes or reads it.",
        file=sys.stderr,
    )
    return EXIT_UNACCOUNTED


def _explain(args: argparse.Namespace) -> int:
    from aifuncs.engines.duckdb import explain

    text = sql_text(args)
    con = connect(args.db)
    try:
        explanation = explain(con, text, dialect=args.dialect)
    finally:
        con.close()
    if args.json:
        print(json.dumps([c.to_dict() for c in explanation.calls], indent=2))
    else:
        print(explanation)
    return 0


def _index(args: argparse.Namespace) -> int:
    from aifuncs import index

    con = connect(args.db)
    try:
        if args.action == "create":
            rows = index.create(
                con,
                args.name,
                table=args.table,
                column=args.column,
                endpoint=args.endpoint,
                replace=args.replace,
            )
            print(f"Indexed {rows:,} rows of {args.table}.{args.column} as {args.name!r}.")
        elif args.action == "drop":
            index.drop(con, args.name)
            print(f"Dropped vector index {args.name!r}.")
        else:
            for row in index.list(con):
                print(
                    f"{row['name']:24} {row['source']}.{row['column_name']:20} {row['rows']:>10,} rows  {row['endpoint']}"
                )
    finally:
        con.close()
    return 0


def add_commands(commands: Any) -> None:
    """Register `query`, `explain` and `index` on the main parser's subparsers."""
    query = commands.add_parser("query", help="run SQL with AI functions")
    query.add_argument("sql", nargs="?")
    query.add_argument("--file", "-f", help="read the SQL from a file")
    query.add_argument("--db", default=":memory:", help="DuckDB database file (default: in memory)")
    query.add_argument("--dialect", default="duckdb", choices=["duckdb", "databricks"])
    query.add_argument("--format", default="table", choices=["table", "csv", "json"])
    query.add_argument("--max-rows", type=int, default=40)
    query.add_argument(
        "--no-cache", action="store_true", help="neither reuse nor keep answers (de-duplication stays)"
    )
    query.add_argument(
        "--max-cost", type=float, metavar="USD", help="refuse or stop the query past this cost"
    )
    query.add_argument("--max-requests", type=int, metavar="N", help="... past this many model requests")
    query.add_argument("--max-tokens", type=int, metavar="N", help="... past this many tokens")
    query.add_argument("--no-progress", action="store_true", help="no progress line, even on a terminal")
    query.set_defaults(handler=_query)

    explain = commands.add_parser(
        "explain", help="show what a query's AI calls will send and cost, calling no model"
    )
    explain.add_argument("sql", nargs="?")
    explain.add_argument("--file", "-f", help="read the SQL from a file")
    explain.add_argument("--db", default=":memory:", help="DuckDB database file (default: in memory)")
    explain.add_argument("--dialect", default="duckdb", choices=["duckdb", "databricks"])
    explain.add_argument("--json", action="store_true")
    explain.set_defaults(handler=_explain)

    index = commands.add_parser("index", help="vector indexes for vector_search(...)")
    index_actions = index.add_subparsers(dest="action", required=True)
    create_index = index_actions.add_parser("create", help="embed a table column into an index")
    create_index.add_argument("name")
    create_index.add_argument("--table", required=True)
    create_index.add_argument("--column", required=True, help="the text column to embed")
    create_index.add_argument("--endpoint", help="an embedding endpoint (default: the default embedding one)")
    create_index.add_argument("--replace", action="store_true", help="rebuild an existing index")
    index_actions.add_parser("drop", help="remove an index").add_argument("name")
    index_actions.add_parser("list", help="the indexes of the database")
    for sub in index_actions.choices.values():
        sub.add_argument("--db", default=":memory:", help="DuckDB database file")
    index.set_defaults(handler=_index)
