"""The DuckDB binding: AI functions as vectorized Arrow UDFs on a DuckDB connection.

`connect()` gives a plain DuckDB connection with the generic functions and system views installed;
`sql()` runs a query through the planner, which registers a typed UDF per AI call site. Every UDF
only moves Arrow arrays between DuckDB and the runtime.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import hashlib
import json
import re
import threading
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pa_json

from aifuncs._fork import renewed_in_child
from aifuncs._home import resource_dir
from aifuncs._runs import runs as list_runs
from aifuncs._types import arrow_type, to_arrow
from aifuncs.catalog import Endpoint
from aifuncs.engines import _indexes as indexes
from aifuncs.engines._explain import explain_calls
from aifuncs.errors import AifuncsError, ConfigError, DatabaseLocked
from aifuncs.governance import AuditLog, Identity, identify
from aifuncs.governance.payloads import payload_log
from aifuncs.governance.visibility import own_since, readable_rows
from aifuncs.planner import (
    EngineHooks,
    PlannedStatement,
    Prescore,
    TableShape,
    rewrite,
    split_statements,
)
from aifuncs.planner._cost import CallEstimate, measurable, render
from aifuncs.runtime import Budget, CallSpec, RequestContext, Runtime, session_budget
from aifuncs.runtime._checkpoint import Checkpoint
from aifuncs.runtime._progress import Progress
from aifuncs.session import Session, bind_call, open_session
from aifuncs.session import request_context as request_context

__all__ = ["connect", "install", "returns_rows", "sql", "sql_each", "typed_error"]

_INSTALLED_MARK = "__aifuncs_ai_query"

ENDPOINTS_TYPE = (
    "STRUCT(name VARCHAR, kind VARCHAR, version INTEGER, description VARCHAR, options VARCHAR,"
    " created_at TIMESTAMP, updated_at TIMESTAMP)[]"
)

USAGE_TYPE = (
    "STRUCT(ts TIMESTAMP, endpoint VARCHAR, endpoint_version INTEGER, kind VARCHAR, function VARCHAR,"
    " rows INTEGER, input_tokens BIGINT, output_tokens BIGINT, latency_ms DOUBLE, status VARCHAR,"
    " attempts INTEGER, error VARCHAR, request_id VARCHAR, requester VARCHAR, origin VARCHAR,"
    " client_request_id VARCHAR, usage_context VARCHAR, status_code INTEGER, input_chars BIGINT,"
    " output_chars BIGINT, served_entity VARCHAR)[]"
)


def _udf(
    con: duckdb.DuckDBPyConnection, name: str, fn: Callable[..., pa.Array], params: list[str], returns: str
) -> None:
    # special null handling: NULL rows reach us (no silent drops); side effects: never folded or run twice.
    con.create_function(  # type: ignore[call-overload]  # the stubs accept no arrow UDFs returning pa.Array
        name, fn, params, returns, type="arrow", null_handling="special", side_effects=True
    )
    with _registered_lock:
        _registered.setdefault(con, set()).add(name)


def connect(
    database: str | Path = ":memory:",
    *,
    read_only: bool = False,
    token: str | None = None,
    session: Session | None = None,
    **config: Any,
) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection with aifuncs' functions and system views installed, acting as the principal of
    `token` (else of `AIFUNCS_TOKEN`, else the OS account that owns AIFUNCS_HOME), or in `session`."""
    try:
        con = duckdb.connect(str(database), read_only=read_only, config=config or {})
    except duckdb.IOException as error:
        locked = _LOCK_HOLDER.search(str(error))
        if locked is None:
            raise
        program, pid = Path(locked["program"]).name, locked["pid"]
        raise DatabaseLocked(
            f"The database {str(database)!r} is open in another process ({program}, PID {pid}), and DuckDB lets"
            " only one process use a database file while it may write. Close it there (con.close(), or end"
            " that notebook's kernel) and run this again."
        ) from None
    try:
        install(con, token=token, session=session)
    except BaseException:
        con.close()
        raise
    return con


# DuckDB's message when another process holds the file: "... Conflicting lock is held in <program> (PID n)".
_LOCK_HOLDER = re.compile(r"Conflicting lock is held in (?P<program>.*?) \(PID (?P<pid>\d+)\)")


def install(
    con: duckdb.DuckDBPyConnection,
    runtime: Runtime | None = None,
    *,
    token: str | None = None,
    identity: Identity | None = None,
    session: Session | None = None,
) -> duckdb.DuckDBPyConnection:
    """Install the generic AI functions, macros and system views on a connection (idempotent), bound to the
    principal of `token` (else of `AIFUNCS_TOKEN`, else the OS account that owns AIFUNCS_HOME).

    DuckDB keeps functions per database instance, which its cursors and every connection to the same file
    in this process share: one instance serves one principal, and asking another of it is an error.
    `identity`: one already authenticated (the server's request), instead of a token; `session`: the whole
    session the connection acts in (its runtime, identity and catalog)."""
    if session is not None:
        identity = session.identity
    if _has_function(con, _INSTALLED_MARK):
        bound = identity_of(con)
        wanted = (
            identity.name if identity is not None else identify(token).name if token is not None else None
        )
        if wanted is not None and wanted != bound.name:
            raise ConfigError(
                f"This database is already open in this process as {bound.name!r}, and DuckDB shares one instance"
                " (and its functions) between the connections to a file: it cannot act as another principal too."
                " Close the other connections first, or open a copy of the file."
            )
        if not _has_function(con, "ai_query"):  # another connection to the file: the functions are shared,
            _install_sql(con)  # but macros and views are TEMP, each connection's own
        return con
    if session is None:
        session = open_session(token=token, identity=identity, runtime=runtime)
    identity = session.identity
    binding = f"{id(session):x}"  # one entry per session, gone with it (its functions hold it while open)
    with _registered_lock:
        _bindings[binding] = session
    # Plain (not Arrow) functions without side effects: DuckDB folds them into constants, once per query.
    con.create_function("__aifuncs_binding", lambda: binding, [], "VARCHAR", side_effects=False)
    con.create_function(
        "aifuncs_current_principal", lambda: identity.principal.name, [], "VARCHAR", side_effects=False
    )
    _udf(
        con,
        "__aifuncs_ai_query",
        _generic_ai_query(session),
        ["VARCHAR", "VARCHAR", "VARCHAR", "BOOLEAN", "VARCHAR", "VARCHAR", "BOOLEAN"],
        "VARCHAR",
    )
    _udf(con, "__aifuncs_endpoints", _endpoints_snapshot(session), [], ENDPOINTS_TYPE)
    _udf(con, "__aifuncs_usage", _usage_snapshot(session), [], USAGE_TYPE)
    _udf(con, "__aifuncs_runs", _runs_snapshot(identity), [], RUNS_TYPE)
    _udf(con, "__aifuncs_permissions", _permissions_snapshot(session), [], PERMISSIONS_TYPE)
    _udf(con, "__aifuncs_audit", _audit_snapshot(identity), [], AUDIT_TYPE)
    _udf(con, "__aifuncs_payloads", _payloads_snapshot(session), [], PAYLOADS_TYPE)
    _install_sql(con)
    return con


def _install_sql(con: duckdb.DuckDBPyConnection) -> None:
    """The `ai_query` macro and the system views: TEMP objects, which each connection holds for itself."""
    for script in ("functions.sql", "system_tables.sql"):
        con.execute((resource_dir("sql") / script).read_text())


# Who each database instance acts as, by the id its `__aifuncs_binding()` returns (connections and cursors
# of one instance are different Python objects: the instance's own function tells which it is).
_bindings: weakref.WeakValueDictionary[str, Session] = weakref.WeakValueDictionary()
_bound: weakref.WeakKeyDictionary[duckdb.DuckDBPyConnection, Session] = weakref.WeakKeyDictionary()


def identity_of(con: duckdb.DuckDBPyConnection) -> Identity:
    """The identity a connection (or a cursor, or another connection to its file) was installed as."""
    return session_of(con).identity


def session_of(con: duckdb.DuckDBPyConnection) -> Session:
    """The session a connection (or a cursor, or another connection to its file) was installed in."""
    with _registered_lock:
        found = _bound.get(con)
    if found is None:
        if not _has_function(con, _INSTALLED_MARK):
            install(con)
        ((binding,),) = con.execute("SELECT __aifuncs_binding()").fetchall()
        with _registered_lock:
            found = _bound[con] = _bindings[str(binding)]
    return found


def sql(
    con: duckdb.DuckDBPyConnection,
    query: str,
    *,
    dialect: str = "duckdb",
    max_requests: int | None = None,
    max_tokens: int | None = None,
    max_cost_usd: float | None = None,
    progress: bool | None = None,
    wait_for_limits: bool = True,
    usage_context: Mapping[str, str] | None = None,
    client_request_id: str | None = None,
    origin: str = "sql",
) -> duckdb.DuckDBPyRelation | None:
    """Run a query with AI functions; returns the relation of the last statement (None for DDL).

    `max_requests`, `max_tokens` and `max_cost_usd` limit what the query may spend (cost from the prices
    set on its endpoints): a query estimated above a limit is refused before it starts, and one that
    reaches a limit while running stops sending requests (with what it received kept). `progress` draws a
    progress line on stderr: by default when stderr is a terminal. Requests an endpoint's rate limits hold
    back wait their turn; `wait_for_limits=False` raises RateLimited (with the wait) instead.
    `usage_context` (labels, e.g. {"team": "growth"}) and `client_request_id` go with every request into
    the usage log (`aifuncs_usage`, `aifuncs_endpoint_usage`), with `origin` (sql; pandas and jobs say so).
    """
    result = None
    budget = Budget(max_requests, max_tokens, max_cost_usd)
    context = request_context(origin, usage_context, client_request_id)
    stream = sql_each(
        con, query, dialect=dialect, budget=budget, progress=progress, wait_for_limits=wait_for_limits,
        context=context,
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


_ROW_KEYWORDS = {"SELECT", "WITH", "FROM", "VALUES", "TABLE", "DESCRIBE", "SHOW", "SUMMARIZE", "EXPLAIN", "PIVOT",
                 "UNPIVOT"}  # fmt: skip


def returns_rows(statement: str) -> bool:
    """Queries return rows; DDL and DML (whose relation is just a count) do not."""
    text = "\n".join(line for line in statement.splitlines() if not line.lstrip().startswith("--")).lstrip()
    first = text.split(None, 1)[0].upper() if text else ""
    return first in _ROW_KEYWORDS or first.startswith("(")


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


def _execute(
    con: duckdb.DuckDBPyConnection,
    planned: PlannedStatement,
    runtime: Runtime,
    progress: Progress | None = None,
) -> duckdb.DuckDBPyRelation | None:
    if not planned.prescores:
        if progress is not None and planned.calls:
            progress.expect(_streamed_rows(con, planned))
        return con.sql(planned.sql)
    registered = []
    try:
        for prescore in planned.prescores:
            rows, requests = prescore.rows, None
            if prescore.distinct:  # the distinct requests: held anyway, beside their answers
                requests = con.sql(prescore.source).to_arrow_table()
                rows = requests.num_rows
            elif rows is None:
                (rows,) = con.execute(f"SELECT count(*) FROM ({prescore.source})").fetchall()[0]
            if progress is not None:
                progress.expect(rows * len(prescore.calls))
            try:
                scores = _prescore(con, prescore, runtime, rows, requests)
            except AifuncsError as error:
                # The same error a streamed call raises from inside DuckDB, whichever path the query took;
                # the typed error stays reachable as its cause.
                raise duckdb.InvalidInputException(str(error)) from error
            con.register(prescore.name, scores)
            registered.append(prescore.name)
        relation = con.sql(planned.sql)
        # Run it now, while the scores are registered: a lazy relation would outlive them, and
        # running it twice would reuse scores of rows that may have changed.
        return None if relation is None else con.from_arrow(relation.to_arrow_table())
    finally:
        for name in registered:
            con.unregister(name)


def _streamed_rows(con: duckdb.DuckDBPyConnection, planned: PlannedStatement) -> int | None:
    """The rows a streamed statement's AI calls will answer, counted with plain SQL over each call's scope
    (as EXPLAIN does), for the progress line's rows left and ETA; None where a scope cannot be counted."""
    total = 0
    for site in planned.calls:
        probe, upper_bound = measurable(site.probe) if site.probe else (None, False)
        if probe is None or upper_bound:
            return None
        try:
            (rows,) = con.execute(f"SELECT count(*) FROM ({probe})").fetchall()[0]
        except duckdb.Error:
            return None  # a scope that only makes sense inside its query (e.g. correlated)
        total += rows
    return total


def _prescore(
    con: duckdb.DuckDBPyConnection,
    prescore: Prescore,
    runtime: Runtime,
    rows: int,
    source: pa.Table | None = None,
) -> pa.Table:
    """Score a bulk call site's requests in big model calls, keeping the table's row order: the carried
    columns as read, then one column of answers per call. `source`: the prescore's rows, already read."""
    # Read in steps of exactly one model call's rows (DuckDB yields row groups of 122,880): the calls in
    # flight are equal work and finish together, and the first starts as soon as its rows are read.
    step = runtime.bulk_step(prescore.calls, rows)
    reader = (
        source.to_reader(max_chunksize=step)
        if source is not None
        else con.sql(prescore.source).to_arrow_reader(step)
    )
    carried: list[list[pa.Array]] = [[] for _ in prescore.carried]

    def requests() -> Iterator[list[pa.ChunkedArray]]:
        for columns in _rebatched(reader, step):
            for kept, column in zip(carried, columns, strict=False):
                kept.extend(column.chunks)
            yield columns[len(carried) :]

    try:
        answers = runtime.score_batches(prescore.calls, requests(), step)
    finally:
        reader.close()  # a failed call leaves rows unread: the connection must be free for the next query
    schema = reader.schema
    columns = [pa.chunked_array(chunks, schema.field(i).type) for i, chunks in enumerate(carried)]
    columns += [
        pa.chunked_array([row[i] for row in answers], arrow_type(call.output_type))
        for i, call in enumerate(prescore.calls)
    ]
    return pa.table(columns, names=[*prescore.carried, *prescore.columns])


def _rebatched(batches: Iterable[pa.RecordBatch], rows: int) -> Iterator[list[pa.ChunkedArray]]:
    """Columns of exactly `rows` rows (the last may have fewer), whatever sizes the reader yields."""
    held: list[pa.RecordBatch] = []
    count = 0
    for batch in batches:
        while batch.num_rows:
            take = min(rows - count, batch.num_rows)
            held.append(batch.slice(0, take))
            count += take
            batch = batch.slice(take)
            if count == rows:
                yield _columns(held)
                held, count = [], 0
    if held:
        yield _columns(held)


def _columns(batches: list[pa.RecordBatch]) -> list[pa.ChunkedArray]:
    # DuckDB's row groups as they are: the runtime copies them into one array only where a provider needs it.
    return pa.Table.from_batches(batches).columns


# The functions aifuncs registered per connection: asking duckdb_functions() costs ~10 ms a time.
_registered: weakref.WeakKeyDictionary[duckdb.DuckDBPyConnection, set[str]] = weakref.WeakKeyDictionary()
_registered_lock = threading.Lock()
renewed_in_child(globals(), "_registered_lock")


def _has_function(con: duckdb.DuckDBPyConnection, name: str) -> bool:
    with _registered_lock:
        known = _registered.setdefault(con, set())
    if name in known:
        return True
    rows = con.execute("SELECT 1 FROM duckdb_functions() WHERE function_name = ? LIMIT 1", [name]).fetchall()
    if rows:
        known.add(name)
    return bool(rows)


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


def _binding_key(call: CallSpec, request_ddl: str | None, revision: int) -> str:
    """What a registered function is bound to: its call's key (every field: a function found by this key is
    used as it was bound), its request type, and the catalog's revision (a governance change gets a new
    function, whatever an open connection registered before)."""
    return json.dumps([call.key(), request_ddl, revision])


@functools.cache
def _volatile() -> frozenset[str]:
    """DuckDB's volatile functions (random, nextval...), read once per process: the query takes ~20 ms."""
    with duckdb.connect() as probe:
        rows = probe.execute(
            "SELECT DISTINCT function_name FROM duckdb_functions() WHERE stability = 'VOLATILE'"
        ).fetchall()
    return frozenset(name for (name,) in rows) | {"__aifuncs_ai_query"}


# The typed errors a UDF raised lately, by message: DuckDB hands the caller a duckdb.Error with the message,
# and `typed_error` finds the typed one again (RateLimited with its wait, GuardrailBlocked...).
_raised: collections.OrderedDict[str, AifuncsError] = collections.OrderedDict()
_RAISED_KEPT = 64


def _remembered(fn: Callable[..., pa.Array]) -> Callable[..., pa.Array]:
    @functools.wraps(fn)
    def udf(*args: pa.Array) -> pa.Array:
        try:
            return fn(*args)
        except AifuncsError as error:
            with _registered_lock:
                _raised[str(error)] = error
                while len(_raised) > _RAISED_KEPT:
                    _raised.popitem(last=False)
            raise

    return udf


def typed_error(error: BaseException) -> AifuncsError | None:
    """The aifuncs error behind a duckdb.Error a query raised while DuckDB ran an AI function, if any."""
    if isinstance(error.__cause__, AifuncsError):
        return error.__cause__
    text = str(error)
    with _registered_lock:
        for message, typed in reversed(_raised.items()):
            if message in text:
                return typed
    return None


def _typed_call(call: CallSpec, runtime: Runtime) -> Callable[[pa.Array], pa.Array]:
    @_remembered
    def udf(request: pa.Array) -> pa.Array:
        return runtime.run_call(call, _as_array(request))

    return udf


def _json_call(call: CallSpec, runtime: Runtime) -> Callable[[pa.Array], pa.Array]:
    @_remembered
    def udf(request_json: pa.Array) -> pa.Array:
        return runtime.run_call(call, decode_json(_as_array(request_json)))

    return udf


def _as_array(values: pa.Array | pa.ChunkedArray) -> pa.Array:
    return values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values


def decode_json(texts: pa.Array) -> pa.Array:
    """JSON texts (DuckDB's to_json) to an Arrow array, parsed in C++ by pyarrow: no per-row Python."""
    texts = texts.cast(pa.string())
    lines = pc.binary_join_element_wise('{"r":', pc.fill_null(texts, "null"), "}\n", "")
    _, offsets, data = lines.buffers()
    bounds = np.frombuffer(offsets, dtype=np.int32)
    data = data[bounds[lines.offset] : bounds[lines.offset + len(lines)]]
    table = pa_json.read_json(pa.BufferReader(data), read_options=pa_json.ReadOptions(use_threads=False))
    return table.column("r").combine_chunks()


def _generic_ai_query(session: Session) -> Callable[..., pa.Array]:
    """The plain-connection ai_query: any endpoint per row, answers as VARCHAR."""
    runtime = session.runtime

    @_remembered
    def udf(
        endpoint: pa.Array,
        request: pa.Array,
        return_type: pa.Array,
        fail_on_error: pa.Array,
        parameters: pa.Array,
        response_format: pa.Array,
        cache: pa.Array,
    ) -> pa.Array:
        columns = [
            _as_array(c) for c in (endpoint, return_type, fail_on_error, parameters, response_format, cache)
        ]
        options = pa.Table.from_arrays(columns, names=["e", "t", "f", "p", "r", "c"])
        requests = _as_array(request)
        result: list[Any] = [None] * len(requests)
        groups = (
            options.append_column("i", pa.array(range(len(requests)), pa.int64()))
            .group_by(["e", "t", "f", "p", "r", "c"], use_threads=False)
            .aggregate([("i", "list")])
        )
        for group in groups.to_pylist():
            rows = pa.array(group["i_list"], pa.int64())
            if group["e"] is None:
                continue  # NULL endpoint: NULL answer
            call = bind_call(
                "ai_query",
                group["e"],
                None,
                return_type=group["t"],
                fail_on_error=True if group["f"] is None else group["f"],
                model_parameters=json.loads(group["p"]) if group["p"] else None,
                response_format=group["r"],
                cache=group["c"],
                session=session,
                meters=tuple(b for b in (session_budget(),) if b is not None),
            )
            values = runtime.run_call(call, decode_json(requests.take(rows)))
            for row, text in zip(group["i_list"], _as_text(values).to_pylist(), strict=True):
                result[row] = text
        return pa.array(result, pa.string())

    return udf


def _as_text(values: pa.Array) -> pa.Array:
    return to_arrow(values, pa.string())


RUNS_TYPE = (
    "STRUCT(id BIGINT, job VARCHAR, path VARCHAR, params VARCHAR, db VARCHAR, output VARCHAR, status VARCHAR,"
    " exit_code INTEGER, started_at TIMESTAMP, ended_at TIMESTAMP, rows BIGINT, failed_rows BIGINT,"
    " requests BIGINT, tokens BIGINT, cost_usd DOUBLE, output_rows BIGINT, resumed_from BIGINT, error VARCHAR,"
    " principal VARCHAR)[]"
)


def _runs_snapshot(identity: Identity) -> Callable[[], pa.Array]:
    """The run ledger as `identity` may read it: its own runs; an admin every run."""

    def snapshot() -> pa.Array:
        me = identity.principal
        rows = list_runs(principal=None if me.admin else me.name)
        if not me.admin:  # nor its runs
            rows = [r for r in rows if own_since(me, datetime.fromisoformat(r["started_at"]))]
        for row in rows:
            row["params"] = json.dumps(row["params"], sort_keys=True)
            for key in ("started_at", "ended_at"):
                row[key] = datetime.fromisoformat(row[key]).replace(tzinfo=None) if row[key] else None
        return pa.array([rows], arrow_type(RUNS_TYPE))

    return snapshot


def _usage_snapshot(session: Session) -> Callable[[], pa.Array]:
    """The usage log as `identity` may read it: its own requests, all of the endpoints it manages; an
    admin everything."""

    def snapshot() -> pa.Array:
        principal = session.principal
        managed = {} if principal.admin else session.catalog.managed()
        rows = readable_rows(session.runtime.usage.read(), principal, managed, _written_at)
        for row in rows:
            row["ts"] = datetime.fromisoformat(row["ts"]).replace(tzinfo=None)
        return pa.array([rows], arrow_type(USAGE_TYPE))

    return snapshot


def _written_at(row: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(row["ts"])


def _logged_at(row: dict[str, Any]) -> datetime:
    return datetime.fromtimestamp(row["timestamp_ms"] / 1000, UTC)


PAYLOADS_TYPE = (
    "STRUCT(request_id VARCHAR, client_request_id VARCHAR, date DATE, timestamp_ms BIGINT, status_code INTEGER,"
    " execution_time_ms DOUBLE, request VARCHAR, response VARCHAR, served_entity_id VARCHAR,"
    " logging_error_codes VARCHAR, requester VARCHAR, endpoint VARCHAR, origin VARCHAR, input_tokens BIGINT,"
    " output_tokens BIGINT)[]"
)


def _payloads_snapshot(session: Session) -> Callable[[], pa.Array]:
    """The inference tables as `identity` may read them: its own requests, all of the endpoints it manages;
    an admin everything."""

    def snapshot() -> pa.Array:
        principal = session.principal
        managed = {} if principal.admin else session.catalog.managed()
        rows = readable_rows(payload_log().read(session.home / "payloads.db"), principal, managed, _logged_at)
        for row in rows:
            row["date"] = datetime.fromisoformat(row["date"]).date()
        return pa.array([rows], arrow_type(PAYLOADS_TYPE))

    return snapshot


AUDIT_TYPE = (
    "STRUCT(id BIGINT, ts TIMESTAMP, actor VARCHAR, action VARCHAR, target VARCHAR, details VARCHAR,"
    " hash VARCHAR)[]"
)


def _audit_snapshot(identity: Identity) -> Callable[[], pa.Array]:
    def snapshot() -> pa.Array:
        me = identity.principal
        entries = AuditLog(identity.home / "catalog.db").entries(None if me.admin else me.name)
        if not me.admin:  # a deleted principal's entries are not those of one made again under its name
            entries = [e for e in entries if own_since(me, datetime.fromisoformat(e.ts))]
        rows = [
            {**dataclasses.asdict(e), "details": json.dumps(e.details, sort_keys=True),
             "ts": datetime.fromisoformat(e.ts).replace(tzinfo=None)}
            for e in entries
        ]  # fmt: skip
        return pa.array([rows], arrow_type(AUDIT_TYPE))

    return snapshot


PERMISSIONS_TYPE = (
    "STRUCT(endpoint VARCHAR, principal VARCHAR, principal_type VARCHAR, permission_level VARCHAR,"
    " inherited BOOLEAN, inherited_from VARCHAR)[]"
)


def _permissions_snapshot(session: Session) -> Callable[[], pa.Array]:
    def snapshot() -> pa.Array:
        return pa.array([session.catalog.permission_rows()], arrow_type(PERMISSIONS_TYPE))

    return snapshot


def _endpoints_snapshot(session: Session) -> Callable[[], pa.Array]:
    def snapshot() -> pa.Array:
        return _endpoint_rows(session.catalog.list())

    return snapshot


def _endpoint_rows(endpoints: list[Endpoint]) -> pa.Array:
    rows = [
        {
            "name": e.name,
            "kind": e.kind,
            "version": e.version,
            "description": e.description,
            "options": json.dumps(e.options, sort_keys=True),
            "created_at": e.created_at.replace(tzinfo=None) if e.created_at else None,
            "updated_at": e.updated_at.replace(tzinfo=None) if e.updated_at else None,
        }
        for e in endpoints
    ]
    return pa.array([rows], arrow_type(ENDPOINTS_TYPE))
