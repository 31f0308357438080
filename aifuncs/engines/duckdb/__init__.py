"""The DuckDB binding: AI functions as vectorized Arrow UDFs on a DuckDB connection.

`connect()` gives a plain DuckDB connection with the generic functions and system views installed;
`sql()` runs a query through the planner, which registers a typed UDF per AI call site. Every UDF
only moves Arrow arrays between DuckDB and the runtime.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import duckdb

from aifuncs.engines import _indexes as indexes
from aifuncs.engines._explain import explain_calls
from aifuncs.engines.duckdb._connect import connect, identity_of, install, session_of
from aifuncs.engines.duckdb._statements import _execute, returns_rows
from aifuncs.engines.duckdb._udfs import (
    _binding_key,
    _has_function,
    _json_call,
    _typed_call,
    _udf,
    _volatile,
    typed_error,
)
from aifuncs.planner import EngineHooks, TableShape, rewrite, split_statements
from aifuncs.planner._cost import CallEstimate, render
from aifuncs.runtime import Budget, CallSpec, RequestContext, session_budget
from aifuncs.runtime._checkpoint import Checkpoint
from aifuncs.runtime._progress import Progress
from aifuncs.session import RequestOptions, Session, SpendingLimits, merge, request_context

__all__ = [
    "Explanation",
    "connect",
    "explain",
    "identity_of",
    "install",
    "returns_rows",
    "session_of",
    "sql",
    "sql_each",
    "typed_error",
]


def sql(
    con: duckdb.DuckDBPyConnection,
    query: str,
    *,
    dialect: str = "duckdb",
    limits: SpendingLimits | None = None,
    options: RequestOptions | None = None,
    max_requests: int | None = None,
    max_tokens: int | None = None,
    max_cost_usd: float | None = None,
    progress: bool | None = None,
    wait_for_limits: bool | None = None,
    usage_context: Mapping[str, str] | None = None,
    client_request_id: str | None = None,
    origin: str = "sql",
) -> duckdb.DuckDBPyRelation | None:
    """Run a query with AI functions; returns the relation of the last statement (None for DDL).

    `limits` (`aifuncs.SpendingLimits`: `max_requests`, `max_tokens`, `max_cost_usd`, also accepted as
    keywords) limit what the query may spend (cost from the prices set on its endpoints): a query estimated
    above a limit is refused before it starts, and one that reaches a limit while running stops sending
    requests (with what it received kept). `options` (`aifuncs.RequestOptions`, its fields also accepted as
    keywords): `progress` draws a progress line on stderr, by default when stderr is a terminal. Requests an
    endpoint's rate limits hold back wait their turn; `wait_for_limits=False` raises RateLimited (with the
    wait) instead. `usage_context` (labels, e.g. {"team": "growth"}) and `client_request_id` go with every
    request into the usage log (`aifuncs_usage`, `aifuncs_endpoint_usage`), with `origin` (sql; pandas and
    jobs say so).
    """
    limits = merge(
        SpendingLimits, limits, max_requests=max_requests, max_tokens=max_tokens, max_cost_usd=max_cost_usd
    )
    options = merge(
        RequestOptions, options, usage_context=usage_context, client_request_id=client_request_id,
        progress=progress, wait_for_limits=wait_for_limits,
    )  # fmt: skip
    result = None
    context = request_context(origin, options.usage_context, options.client_request_id)
    stream = sql_each(
        con, query, dialect=dialect, budget=limits.budget(), progress=options.progress,
        wait_for_limits=options.wait_for_limits, context=context,
    )  # fmt: skip
    for _, relation in stream:
        result = relation
    return result


@dataclass(frozen=True)
class Explanation:
    """What a query's AI calls will send and cost; `str()` renders it as `aifuncs explain` prints it."""

    calls: list[CallEstimate]

    def __str__(self) -> str:
        return render(self.calls)

    @property
    def cost_usd(self) -> float | None:
        costs = [c.cost_usd for c in self.calls if c.cost_usd is not None]
        return sum(costs) if costs else None


def explain(con: duckdb.DuckDBPyConnection, query: str, *, dialect: str = "duckdb") -> Explanation:
    """Each AI call of `query`: endpoint, rows, distinct and cached requests, requests to send, tokens and
    cost, measured with plain SQL before any model is called. Nothing is executed but those counts."""
    install(con)
    session = session_of(con)
    return Explanation(explain_calls(con, query, dialect, _hooks(con, session), session.runtime))


def sql_each(
    con: duckdb.DuckDBPyConnection,
    query: str,
    *,
    dialect: str = "duckdb",
    budget: Budget | None = None,
    progress: bool | Progress | None = None,
    wait_for_limits: bool = True,
    context: RequestContext | None = None,
    checkpoint: Checkpoint | None = None,
) -> Iterator[tuple[str, duckdb.DuckDBPyRelation | None]]:
    """Run the statements of a query one by one, yielding each one's text and relation. `checkpoint`: the
    job's, which keeps the answers a rerun would pay for again (this query's, no other's)."""
    install(con)
    session = session_of(con)
    session.identity.recheck()  # a token revoked since the connection opened stops here
    budgets = tuple(b for b in (budget, session_budget()) if b is not None and b.limited)
    line = progress if isinstance(progress, Progress) else Progress.for_terminal(progress)
    query_session = session.derive(
        budgets=budgets, progress=line, context=context or RequestContext(), wait_for_limits=wait_for_limits,
        checkpoint=checkpoint,
    )  # fmt: skip
    # The connection's hooks (its runtime and catalog registered the functions) for this query's session.
    hooks = dataclasses.replace(_hooks(con), session=query_session)
    if budgets:
        _check_estimate(con, query, dialect, hooks, budgets)
    ran_to_the_end = True
    try:
        for number, statement in enumerate(split_statements(query, dialect), start=1):
            result = None
            for planned in rewrite(statement, dialect, hooks, number=number):
                result = _execute(con, planned, query_session.runtime, line)
                # A streamed SELECT runs later, as its rows are fetched: the progress line ends by itself.
                ran_to_the_end = (
                    result is None
                    or not returns_rows(statement)
                    or bool(planned.prescores)
                    or not planned.calls
                )
            yield statement, result
    finally:
        if line is not None and ran_to_the_end:
            line.finish()
        session.runtime.usage.query_done()


def _check_estimate(
    con: duckdb.DuckDBPyConnection, query: str, dialect: str, hooks: EngineHooks, budgets: tuple[Budget, ...]
) -> None:
    """Refuse a query whose estimate (as EXPLAIN gives it) exceeds a budget, before anything is sent."""
    calls = explain_calls(con, query, dialect, hooks, hooks.runtime())

    def total(values: list[Any]) -> Any:
        return None if any(v is None for v in values) else sum(values)

    requests = total([c.model_requests for c in calls])
    tokens = total([(c.input_tokens or 0) + (c.output_tokens or 0) for c in calls])
    costs = [c.cost_usd for c in calls if c.cost_usd is not None]
    for budget in budgets:
        budget.check_estimate(requests, tokens, sum(costs) if costs else None)


def _hooks(con: duckdb.DuckDBPyConnection, session: Session | None = None) -> EngineHooks:
    """The planner's view of a connection, for a query in `session` (else the connection's own)."""
    session = session or session_of(con)

    def describe(query: str) -> str:
        rows = con.execute(f"DESCRIBE {query}").fetchall()
        return str(rows[0][1])

    def evaluate(expression: str) -> Any:
        rows = con.execute(f"SELECT to_json({expression})").fetchall()
        return None if rows[0][0] is None else json.loads(rows[0][0])

    def register(call: CallSpec, request_ddl: str | None) -> str:
        key = _binding_key(call, request_ddl, session.base_catalog.revision())
        name = f"__aifuncs_{call.function}_{hashlib.sha256(key.encode()).hexdigest()[:16]}"
        if not _has_function(con, name):
            fn = _typed_call(call, session.runtime) if request_ddl else _json_call(call, session.runtime)
            _udf(con, name, fn, [request_ddl or "VARCHAR"], call.output_type)
        return name

    def is_table(name: str) -> bool:
        try:  # views, CTEs and table functions have no rowid; base tables do
            con.execute(f"DESCRIBE SELECT rowid FROM {name}").fetchall()
        except duckdb.Error:
            return False
        return True

    def shape(name: str) -> TableShape:
        columns = {str(row[0]): str(row[1]) for row in con.execute(f"DESCRIBE {name}").fetchall()}
        (rows,) = con.execute(f"SELECT count(*) FROM {name}").fetchall()[0]
        return TableShape(columns, int(rows))

    return EngineHooks(
        describe=describe,
        evaluate=evaluate,
        register=register,
        is_table=is_table,
        volatile=_volatile(),
        shape=shape,
        vector_index=functools.partial(indexes.find, con),
        session=session,
    )
