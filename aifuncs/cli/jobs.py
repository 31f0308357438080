"""`aifuncs run` and `aifuncs runs`: scheduled SQL jobs and their ledger."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from aifuncs.cli._common import EXIT_USAGE, database_option, reach_database, spending_limits
from aifuncs.errors import AifuncsError


def _run(args: argparse.Namespace) -> int:
    from aifuncs import jobs
    from aifuncs.runtime._progress import Progress

    reach_database()
    try:
        jobs.check_output(args.output)
        params = dict(_parse_param(p) for p in args.param or [])
        limits = spending_limits(args)
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


def add_commands(commands: Any) -> None:
    """Register `run` and `runs` on the main parser's subparsers."""
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
    database_option(run)
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
