"""The `aifuncs` command line. Errors become one-line messages here, and only here."""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Sequence

import duckdb

from aifuncs.cli._common import EXIT_BUDGET, EXIT_ERROR, EXIT_LOCKED, EXIT_UNACCOUNTED, EXIT_USAGE
from aifuncs.cli.endpoints import add_cache_commands
from aifuncs.cli.endpoints import add_commands as add_endpoint_commands
from aifuncs.cli.governance import add_commands as add_governance_commands
from aifuncs.cli.home import add_commands as add_home_commands
from aifuncs.cli.jobs import add_commands as add_job_commands
from aifuncs.cli.queries import add_commands as add_query_commands
from aifuncs.cli.serving import add_commands as add_serving_commands
from aifuncs.errors import AifuncsError, BudgetExceeded, JobLocked

__all__ = [
    "EXIT_BUDGET",
    "EXIT_ERROR",
    "EXIT_LOCKED",
    "EXIT_UNACCOUNTED",
    "EXIT_USAGE",
    "build_parser",
    "main",
]

BUDGET_MESSAGE = re.compile(r"The (query|session) budget")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="aifuncs", description="AI functions for SQL.")
    commands = parser.add_subparsers(dest="command", required=True)
    add_endpoint_commands(commands)
    add_query_commands(commands)  # query, explain, index
    add_job_commands(commands)  # run, runs
    add_cache_commands(commands)
    add_governance_commands(commands)
    add_serving_commands(commands)  # serve, ui
    add_home_commands(commands)  # home migrate
    return parser


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
