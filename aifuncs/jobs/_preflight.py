"""What a job can be checked for before it pays for its first request.

A job's statements run in order, and an error in the third one used to surface after the first two had
paid for their model calls. Before any statement runs, every statement is parsed, every AI call's arguments
are bound by its function's spec, its literal `returnType` is read, and each endpoint or connection it names
is resolved in the catalog as the runner sees it (existence and CAN_QUERY). What depends on data or on the
tables earlier statements make is left to the run itself.
"""

from __future__ import annotations

import sqlglot
from sqlglot import exp

from aifuncs._types import to_duckdb_type
from aifuncs.catalog import Catalog
from aifuncs.errors import SqlError
from aifuncs.functions import get_spec
from aifuncs.planner import bind_arguments
from aifuncs.planner._dialects import reader
from aifuncs.planner._rewrite import _as_anonymous

__all__ = ["check_script"]


def check_script(sql: str, dialect: str, catalog: Catalog) -> None:
    """Raise the error the run would meet first among those knowable now (SqlError, ArgumentError,
    UnknownEndpoint, PermissionDenied); nothing is sent to any model."""
    try:
        statements = [s for s in sqlglot.parse(sql, read=reader(dialect)) if s is not None]
    except sqlglot.errors.ParseError as error:
        first = error.errors[0] if error.errors else {}
        where = f" at line {first.get('line')}, column {first.get('col')}" if first else ""
        raise SqlError(
            f"Cannot parse the job as {dialect} SQL{where}: {first.get('description', error)}"
        ) from None
    checked: set[str] = set()
    for statement in statements:
        for call in _as_anonymous(statement).find_all(exp.Anonymous):
            spec = get_spec(call.name)
            if spec is None:
                continue
            args = bind_arguments(spec, call)
            for name in ("endpoint", "conn"):
                named = args.get(name)
                if isinstance(named, exp.Literal) and named.is_string and named.this not in checked:
                    catalog.authorize(named.this, "query")
                    checked.add(named.this)
            declared = args.get("returnType")
            if isinstance(declared, exp.Literal) and declared.is_string:
                to_duckdb_type(declared.this)
