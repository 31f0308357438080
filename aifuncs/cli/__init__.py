"""The `aifuncs` command line. Errors become one-line messages here, and only here."""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import duckdb

from aifuncs.cli.governance import add_commands as add_governance_commands
from aifuncs.errors import AifuncsError, BudgetExceeded, JobLocked

if TYPE_CHECKING:
    from aifuncs.session import SpendingLimits

BUDGET_MESSAGE = re.compile(r"The (query|session) budget")


def _parse_option(text: str) -> tuple[str, Any]:
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise AifuncsError(f"Option {text!r} is not of the form key=value.")
    try:
        value: Any = json.loads(raw)  # numbers, booleans, lists, objects
    except json.JSONDecodeError:
        value = raw
    return key.strip(), value


def _options(pairs: Sequence[str] | None) -> dict[str, Any]:
    return dict(_parse_option(p) for p in pairs or [])


def _print_endpoint(endpoint: Any, as_json: bool) -> None:
    data = endpoint.to_dict()
    if as_json:
        print(json.dumps(data, indent=2))
        return
    for key, value in data.items():
        print(f"{key:12} {json.dumps(value) if isinstance(value, dict) else value}")


def _endpoints(args: argparse.Namespace) -> int:
    from aifuncs import catalog

    if args.action == "create":
        _print_endpoint(
            catalog.create(args.name, args.kind, description=args.description or "", **_options(args.option)),
            args.json,
        )
    elif args.action == "get":
        _print_endpoint(catalog.get(args.name), args.json)
    elif args.action == "update":
        _print_endpoint(
            catalog.update(args.name, description=args.description, **_options(args.option)), args.json
        )
    elif args.action == "delete":
        catalog.delete(args.name)
        print(f"Deleted endpoint {args.name!r}.")
    elif args.action == "versions":
        for version in catalog.versions(args.name):
            print(json.dumps(version))
    else:
        endpoints = catalog.list()
        if args.json:
            print(json.dumps([e.to_dict() for e in endpoints], indent=2))
        elif not endpoints:
            print(
                "No endpoints yet. Create one with `aifuncs endpoints create NAME --kind KIND -o key=value`."
            )
        else:
            for e in endpoints:
                print(f"{e.name:30} {e.kind:10} v{e.version:<4} {e.description}")
    return 0


def _query(args: argparse.Namespace) -> int:
    from aifuncs.engines.duckdb import returns_rows, sql_each

    if args.no_cache:
        os.environ["AIFUNCS_CACHE"] = "off"  # this process only: read the runtime's switch

    text = _sql_text(args)
    budget = _limits(args).budget()
    con = _connect(args.db)
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

    text = _sql_text(args)
    con = _connect(args.db)
    try:
        explanation = explain(con, text, dialect=args.dialect)
    finally:
        con.close()
    if args.json:
        print(json.dumps([c.to_dict() for c in explanation.calls], indent=2))
    else:
        print(explanation)
    return 0


def _connect(database: str) -> duckdb.DuckDBPyConnection:
    from aifuncs.engines.duckdb import connect

    con = connect(database)
    # DuckDB draws its own progress bar on stdout for long queries, in the middle of CSV or JSON output;
    # aifuncs' progress line goes to stderr instead.
    con.execute("SET enable_progress_bar = false")
    return con


def _sql_text(args: argparse.Namespace) -> str:
    text: str | None = open(args.file).read() if args.file else args.sql
    if not text:
        raise AifuncsError("Give the SQL as an argument or with --file PATH.")
    return text


def _index(args: argparse.Namespace) -> int:
    from aifuncs import index

    con = _connect(args.db)
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


def _limits(args: argparse.Namespace) -> SpendingLimits:
    """--max-requests, --max-tokens and --max-cost as the options object the engines take."""
    from aifuncs.session import SpendingLimits

    return SpendingLimits(args.max_requests, args.max_tokens, args.max_cost)


def _run(args: argparse.Namespace) -> int:
    from aifuncs import jobs
    from aifuncs.runtime._progress import Progress

    _reach_database()
    try:
        jobs.check_output(args.output)
        params = dict(_parse_param(p) for p in args.param or [])
        limits = _limits(args)
    except AifuncsError as error:
        print(f"aifuncs run: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    as_json = args.json or not sys.stderr.isatty()  # a scheduler or a log collector reads it
    shown: list[Any] = []

    def emit(event: dict[str, Any]) -> None:
        if as_json:
            print(json.dumps(event), flush=True)

    if args.no_progress:
        progress = Progress(None)
    elif as_json:
        progress = Progress(sys.stdout, style="json", interval_s=args.progress_interval)
    else:
        progress = Progress.for_terminal(True) or Progress(None)
    result = jobs.run(
        args.job,
        db=args.db,
        params=params,
        output=args.output,
        dialect=args.dialect,
        limits=limits,
        max_failed_rows=args.max_failed_rows,
        progress=progress,
        on_event=emit,
        on_result=None if as_json else shown.append,
        engine=args.engine,
    )
    for table in shown:  # after the progress line has ended
        _show_rows(table)
    if as_json:
        print(json.dumps({"event": "summary", **result.to_dict()}), flush=True)
    else:
        print(_run_line(result.to_dict()), file=sys.stderr)
        if result.error:
            print(f"error: {result.error}", file=sys.stderr)
    return result.exit_code


def _show_rows(table: Any) -> None:
    """On a terminal, a job without --output shows its last query's rows, as `aifuncs query` does."""
    frame = table.to_pandas()
    print(frame.to_string(index=False, max_rows=40) if len(frame) else "(no rows)")


def _parse_param(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name.strip():
        raise AifuncsError(f"--param {text!r} is not of the form name=value.")
    return name.strip(), value


def _run_line(run: dict[str, Any]) -> str:
    parts = [
        f"run {run.get('run_id', run.get('id'))}",
        run["job"],
        run["status"],
        f"{run['rows']:,} rows",
        f"{run['failed_rows']:,} failed",
        f"{run['requests']:,} requests",
        f"{run['tokens']:,} tokens",
        f"${run['cost_usd']:,.4f}",
    ]
    if run.get("output"):
        parts.append(
            f"-> {run['output']}"
            + (f" ({run['output_rows']:,} rows)" if run.get("output_rows") is not None else "")
        )
    if run.get("resumed_from"):
        parts.append(f"resumed from run {run['resumed_from']}")
    return " · ".join(parts)


def _runs(args: argparse.Namespace) -> int:
    from aifuncs import jobs

    if args.action == "show":
        found = jobs.get_run(args.id)
        if found is None:
            raise AifuncsError(f"No run {args.id} in the ledger; see `aifuncs runs list`.")
        if args.json:
            print(json.dumps(found, indent=2))
        else:
            for key, value in found.items():
                print(f"{key:18} {json.dumps(value) if isinstance(value, dict) else value}")
        return 0
    rows = jobs.list_runs(args.job, args.limit)
    if args.json:
        print(json.dumps(rows, indent=2))
    elif not rows:
        print("No runs yet. Run a job with `aifuncs run JOB.sql`.")
    else:
        for row in rows:
            print(f"{row['started_at'][:19]}  " + _run_line(row))
    return 0


def _cache(args: argparse.Namespace) -> int:
    from aifuncs import cache

    if args.action == "clear":
        count = cache.clear(args.endpoint)
        print(f"Forgot {count:,} answers" + (f" of endpoint {args.endpoint!r}." if args.endpoint else "."))
        return 0
    stats = cache.stats()
    if args.json:
        print(json.dumps({"path": str(stats.path), "answers": stats.answers, "bytes": stats.bytes,
                          "endpoints": stats.endpoints}, indent=2))  # fmt: skip
        return 0
    print(f"{stats.answers:,} answers, {stats.bytes / 1e6:.1f} MB in {stats.path}")
    for name, count in stats.endpoints.items():
        print(f"  {name:30} {count:>12,}")
    return 0


def _print_sign_in(host: str, port: int, scheme: str = "http") -> None:
    """On a loopback address, a one-time sign-in link for the home's owner (as Jupyter prints one); the
    process acts as the owner only without AIFUNCS_TOKEN."""
    from aifuncs._home import home
    from aifuncs.governance import current
    from aifuncs.server._run import _loopback
    from aifuncs.server.ui import sign_in_link

    if not _loopback(host) or not current().principal.implicit:
        return
    address = f"[{host}]" if ":" in host else ("127.0.0.1" if host in ("", "localhost") else host)
    link = sign_in_link(f"{scheme}://{address}:{port}", home())
    print(f"The web UI: open this link to sign in (it works once):\n    {link}", flush=True)


def _ui(args: argparse.Namespace) -> int:
    from aifuncs.server import serve

    _print_sign_in("127.0.0.1", args.port)
    serve("127.0.0.1", args.port, workers=1, warehouse=args.warehouse)
    return 0


def _serve(args: argparse.Namespace) -> int:
    from aifuncs.server import serve

    _reach_database()
    _print_sign_in(args.host, args.port, "https" if args.tls_cert else "http")
    serve(args.host, args.port, workers=args.workers, tls_cert=args.tls_cert, tls_key=args.tls_key,
          insecure_http=args.insecure_http, warehouse=args.warehouse, public_url=args.public_url,
          client_timeout_s=args.client_timeout, max_connections=args.max_connections,
          statement_timeout_s=args.statement_timeout_s, statement_memory=args.statement_memory,
          statement_concurrency=args.statement_concurrency,
          statement_result_mb=args.statement_result_mb)  # fmt: skip
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="aifuncs", description="AI functions for SQL.")
    commands = parser.add_subparsers(dest="command", required=True)

    endpoints = commands.add_parser("endpoints", help="manage the endpoint catalog")
    actions = endpoints.add_subparsers(dest="action", required=True)
    actions.add_parser("list", help="list endpoints").add_argument("--json", action="store_true")
    for name, helptext in (
        ("get", "show one endpoint"),
        ("delete", "delete an endpoint"),
        ("versions", "show every version of an endpoint"),
    ):
        sub = actions.add_parser(name, help=helptext)
        sub.add_argument("name")
        sub.add_argument("--json", action="store_true")
    create = actions.add_parser("create", help="register a model as an endpoint")
    create.add_argument("name")
    create.add_argument("--kind", required=True, help="python, mlflow, ... (installed providers)")
    update = actions.add_parser("update", help="change an endpoint's options (bumps its version)")
    update.add_argument("name")
    for sub in (create, update):
        sub.add_argument(
            "-o",
            "--option",
            action="append",
            metavar="KEY=VALUE",
            help="an option, e.g. -o model_uri=models:/wine/1 (values may be JSON)",
        )
        sub.add_argument("--description")
        sub.add_argument("--json", action="store_true")
    endpoints.set_defaults(handler=_endpoints)

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

    run = commands.add_parser(
        "run",
        help="run a SQL job: parameters, output, progress, checkpoint and a ledger entry",
        description="Exit codes: 0 success, 1 failed, 2 bad arguments, 3 budget, 4 too many failed rows,"
        " 5 endpoint unreachable, 6 bad SQL, 7 already running.",
    )
    run.add_argument("job", help="a .sql file of one or more statements")
    run.add_argument("--db", default=":memory:", help="DuckDB database file (default: in memory)")
    run.add_argument(
        "--param", "-p", action="append", metavar="NAME=VALUE", help="fills :NAME, $NAME, ${NAME}"
    )
    run.add_argument(
        "--output",
        "-o",
        metavar="TARGET",
        help="where the last query's rows go: table:NAME, FILE.parquet or FILE.csv",
    )
    run.add_argument("--dialect", default="duckdb", choices=["duckdb", "databricks"])
    run.add_argument(
        "--engine",
        default="duckdb",
        choices=["duckdb", "spark"],
        help="spark: the active session, else Spark Connect at SPARK_REMOTE, else local on every core",
    )
    run.add_argument("--json", action="store_true", help="JSON lines on stdout (the default off a terminal)")
    run.add_argument("--max-failed-rows", type=int, metavar="N", help="exit 4 when more rows fail")
    run.add_argument("--max-cost", type=float, metavar="USD", help="refuse or stop the job past this cost")
    run.add_argument("--max-requests", type=int, metavar="N", help="... past this many model requests")
    run.add_argument("--max-tokens", type=int, metavar="N", help="... past this many tokens")
    run.add_argument("--no-progress", action="store_true", help="no progress line or progress events")
    run.add_argument(
        "--progress-interval",
        type=float,
        default=None,
        metavar="S",
        help="seconds between JSON progress events (5)",
    )
    _database_option(run)
    run.set_defaults(handler=_run)

    runs = commands.add_parser("runs", help="the ledger of job runs")
    runs_actions = runs.add_subparsers(dest="action", required=True)
    runs_list = runs_actions.add_parser("list", help="runs, newest first")
    runs_list.add_argument("--job", help="only this job (its name or file)")
    runs_list.add_argument("--limit", type=int, default=20)
    runs_list.add_argument("--json", action="store_true")
    runs_show = runs_actions.add_parser("show", help="one run, whole")
    runs_show.add_argument("id", type=int)
    runs_show.add_argument("--json", action="store_true")
    runs.set_defaults(handler=_runs)

    cache = commands.add_parser("cache", help="the kept answers under AIFUNCS_HOME")
    cache_actions = cache.add_subparsers(dest="action", required=True)
    cache_actions.add_parser("stats", help="answers kept, per endpoint").add_argument(
        "--json", action="store_true"
    )
    cache_actions.add_parser("clear", help="forget kept answers").add_argument(
        "--endpoint", help="only this endpoint's answers"
    )
    cache.set_defaults(handler=_cache)
    add_governance_commands(commands)

    serve = commands.add_parser(
        "serve", help="serve every endpoint as a REST API (Databricks' serving endpoints)"
    )
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8080)
    serve.add_argument("--workers", type=int, default=1, help="processes (they share AIFUNCS_HOME)")
    _database_option(serve)
    serve.add_argument("--tls-cert", metavar="PEM", help="certificate chain; TLS 1.2 and 1.3 only")
    serve.add_argument("--tls-key", metavar="PEM", help="its private key")
    serve.add_argument(
        "--insecure-http",
        action="store_true",
        help="allow plain HTTP on a non-loopback address (behind a TLS proxy)",
    )
    serve.add_argument("--warehouse", metavar="DB", help="the DuckDB file SQL over HTTP reads (read-only)")
    serve.add_argument(
        "--public-url",
        metavar="URL",
        help="how clients reach the server, e.g. https://ai.example.com (default: the address they connected to)",
    )
    serve.add_argument(
        "--client-timeout",
        type=float,
        default=10.0,
        metavar="S",
        help="seconds a client has to send a whole request (head and body); idle connections close sooner (10)",
    )
    serve.add_argument(
        "--max-connections",
        type=int,
        default=1024,
        metavar="N",
        help="connections per worker; one more closes the oldest idle or stalled one (1024)",
    )
    serve.add_argument(
        "--statement-timeout-s",
        type=float,
        metavar="S",
        help="SQL over HTTP: a statement still running after S seconds is cancelled (900)",
    )
    serve.add_argument(
        "--statement-memory",
        metavar="SIZE",
        help="SQL over HTTP: DuckDB's memory limit per statement, e.g. 2GB (1GB)",
    )
    serve.add_argument(
        "--statement-concurrency",
        type=int,
        metavar="N",
        help="SQL over HTTP: statements one principal may have pending or running (4)",
    )
    serve.add_argument(
        "--statement-result-mb",
        type=int,
        metavar="MB",
        help="SQL over HTTP: the largest result answered; a larger one fails (25)",
    )
    serve.set_defaults(handler=_serve)

    ui = commands.add_parser(
        "ui", help="the web UI on 127.0.0.1 for the home's owner: prints a one-time sign-in link"
    )
    ui.add_argument("--port", type=int, default=8765)
    ui.add_argument("--warehouse", metavar="DB", help="the DuckDB file the SQL page reads (read-only)")
    ui.set_defaults(handler=_ui)
    return parser


EXIT_ERROR = 1
EXIT_USAGE = 2  # as argparse: the command line itself is wrong
EXIT_BUDGET = 3  # a budget refused or stopped the query: a scheduler may retry with a larger one
EXIT_LOCKED = (
    7  # another run of the same job is running (the other codes of `aifuncs run`: aifuncs.jobs.Exit)
)
EXIT_UNACCOUNTED = 9  # `aifuncs query` answered, but a locked log could not take its rows yet


def _database_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--database-url",
        metavar="URL",
        help="the shared database for the catalog and governance (postgresql://...; default: AIFUNCS_DATABASE_URL,"
        " else SQLite files under AIFUNCS_HOME). A password here shows in the process list: prefer the variable,"
        " PGPASSWORD or ~/.pgpass",
    )


def _reach_database() -> None:
    """Fail at start, with the URL shown without its password, when the shared database cannot be used."""
    from aifuncs._home import home_file
    from aifuncs.storage import shared

    database = shared(home_file("catalog.db"))
    if database is not None:
        database.pool()


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "database_url", None):
        os.environ["AIFUNCS_DATABASE_URL"] = args.database_url  # the process's setting, and its workers'
    try:
        return int(args.handler(args))
    except JobLocked as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_LOCKED
    except BudgetExceeded as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_BUDGET
    except AifuncsError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_ERROR
    except duckdb.Error as error:
        # UDF failures arrive wrapped by DuckDB; show the message without the wrapping.
        message = str(error).replace("Python exception occurred while executing the UDF: ", "")
        print(f"error: {message}", file=sys.stderr)
        budget = isinstance(error.__cause__, BudgetExceeded) or BUDGET_MESSAGE.search(message)
        return EXIT_BUDGET if budget else EXIT_ERROR
    except OSError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
