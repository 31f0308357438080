"""Rewrite a query's AI calls into UDFs specialised for each call site.

DuckDB fixes a Python UDF's types at registration, so `ai_query('ep', x, returnType => 'DOUBLE')` cannot
be one function with a per-call type. The planner finds each AI call with sqlglot, binds its arguments
against the function spec, resolves the endpoint and types, and replaces the call with a UDF registered
for exactly that call: one request type in, one result type out, options bound in a closure.
Calls to in-process models in a plain scoring query take the bulk path instead (see `_bulk.py`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import sqlglot
from sqlglot import exp
from sqlglot.tokens import TokenType

from aifuncs._types import arrow_type
from aifuncs.catalog import Catalog, default_catalog
from aifuncs.errors import AifuncsError, ArgumentError, SqlError
from aifuncs.functions import FunctionSpec, all_specs, get_spec
from aifuncs.functions.tasks import bind_task
from aifuncs.planner._aliases import lift_alias_references
from aifuncs.planner._bulk import BulkPlanner, Prescore, TableShape
from aifuncs.planner._dialects import adapt, reader, to_engine, writer
from aifuncs.planner._forecast import FUNCTION_META, Forecast, forecast_query
from aifuncs.planner._forecast import names as forecast_names
from aifuncs.planner._forecast import time_type as forecast_time_type
from aifuncs.planner._reads import ancestors
from aifuncs.providers.forecast import check_settings as check_forecast_settings
from aifuncs.runtime import CallSpec, Meter, Runtime, default_runtime
from aifuncs.session import Session, bind_call

PROBE_ALIAS = "__aifuncs_request"


@dataclass(frozen=True)
class EngineHooks:
    """What the planner needs from an engine, and nothing more."""

    describe: Callable[[str], str]  # a one-column query -> the DuckDB type of its column
    evaluate: Callable[[str], Any]  # a constant expression -> its value as Python
    register: Callable[[CallSpec, str | None], str]  # call, request type (None: JSON) -> function name
    is_table: Callable[[str], bool] = lambda name: False  # a base table, scanned in the same order each time
    volatile: frozenset[str] = frozenset()  # functions whose value changes per call (random, nextval...)
    shape: Callable[[str], TableShape | None] = lambda name: None  # a base table's columns and rows
    # A vector index by name; None where the engine keeps none (vector_search is refused there).
    vector_index: Callable[[str], VectorIndex | None] | None = None
    # Who the query runs as, on which runtime, with which meters, usage labels and checkpoint; None (planner
    # tests only): this process's runtime and identity.
    session: Session | None = None
    dialect: str = "duckdb"  # the SQL the engine reads: the planner writes statements and probes in it
    name: str = "DuckDB"  # the engine, as errors name it
    cosine_similarity: str = "list_cosine_similarity"  # the engine's function of two float arrays
    bulk: bool = True  # scoring queries may score whole columns ahead (DuckDB's POSITIONAL JOIN: `_bulk.py`)

    def catalog(self) -> Catalog:
        """The catalog as the query's principal sees it."""
        return default_catalog() if self.session is None else self.session.catalog

    def runtime(self) -> Runtime:
        return default_runtime() if self.session is None else self.session.runtime


@dataclass(frozen=True)
class VectorIndex:
    """A vector index as the planner reads it: a table of rows and their embeddings, and who embedded them."""

    table: str  # SQL name of the table
    embedding_column: str
    endpoint: str


@dataclass(frozen=True)
class CallSite:
    """One AI call of a statement, as EXPLAIN shows it."""

    text: str  # the call as written (in the engine's SQL)
    call: CallSpec
    probe: str | None  # a query whose one column is the request, over the call's scope; None when unknown
    request_type: str | None  # DuckDB DDL of the request (None: passed as JSON)
    bulk: bool  # scored ahead of the statement (the bulk path) rather than streamed through a UDF


@dataclass(frozen=True)
class PlannedStatement:
    """One statement to run: its SQL in the engine's dialect, the columns to score before it (the bulk
    path), its AI calls."""

    sql: str
    prescores: tuple[Prescore, ...] = field(default=())
    calls: tuple[CallSite, ...] = field(default=())


def rewrite(
    query: str, dialect: str, hooks: EngineHooks, meters: tuple[Meter, ...] | None = None, number: int = 1
) -> list[PlannedStatement]:
    """The statements of `query` in the engine's SQL, every AI call replaced by its specialised UDF.

    `meters`: what the calls are counted against (None: the hooks' session's budgets and progress).
    `number` is the first statement's number in its script, for error messages."""
    _refuse_reserved(query)
    if dialect == hooks.dialect == "duckdb" and not _mentions_ai_function(query):
        return [PlannedStatement(query)]  # nothing to do: DuckDB reads its own SQL better than any round trip
    try:
        statements = [s for s in sqlglot.parse(query, read=reader(dialect)) if s is not None]
    except sqlglot.errors.ParseError as error:
        first = error.errors[0] if error.errors else {}
        where = f" at line {first.get('line')}, column {first.get('col')}" if first else ""
        raise SqlError(
            f"Cannot parse the query as {dialect} SQL{where}: {first.get('description', error)}"
        ) from None
    return [
        _rewrite_statement(
            _expand_similarity(adapt(_as_anonymous(s), dialect, n, hooks.dialect), hooks.cosine_similarity),
            hooks,
            meters,
            dialect,
            n,
        )
        for n, s in enumerate(statements, start=number)
    ]


# aifuncs' own functions (aifuncs_current_principal, __aifuncs_ai_query...) are not SQL's to redefine: a
# macro of the same name would shadow the one bound to the connection's principal.
_RESERVED = re.compile(
    r"\b(?:CREATE\s+(?:OR\s+REPLACE\s+)?(?:TEMP(?:ORARY)?\s+)?(?:MACRO|FUNCTION)|DROP\s+(?:MACRO|FUNCTION))"
    r"\s+(?:TABLE\s+)?(?:IF\s+(?:NOT\s+)?EXISTS\s+)?(?:[\w\"]+\.)*\"?(?:__)?aifuncs_",
    re.IGNORECASE,
)


def _refuse_reserved(query: str) -> None:
    found = _RESERVED.search(query)
    if found is not None:
        raise SqlError(
            "Names starting with aifuncs_ or __aifuncs_ belong to aifuncs' own functions, which are bound to"
            " the connection's principal; SQL may not create or drop them. Choose another name."
        )


def split_statements(query: str, dialect: str) -> list[str]:
    """Split a script at its semicolons, found by sqlglot's tokenizer (so none inside strings), keeping the text."""
    try:
        tokens = sqlglot.Dialect.get_or_raise(dialect).tokenize(query)
    except sqlglot.errors.TokenError:
        return [query]  # let the parser or DuckDB report the problem with its own position
    pieces, start, has_tokens = [], 0, False
    for token in tokens:
        if token.token_type == TokenType.SEMICOLON:
            if has_tokens:
                pieces.append(query[start : token.start].strip())
            start, has_tokens = token.end + 1, False
        else:
            has_tokens = True
    if has_tokens:  # a trailing piece of only comments is no statement
        pieces.append(query[start:].strip())
    return pieces


def _mentions_ai_function(query: str) -> bool:
    lowered = query.lower()
    return any(name in lowered for name in all_specs())


def _as_anonymous(tree: exp.Expr) -> exp.Expr:
    """sqlglot parses some AI functions into typed nodes (AI_CLASSIFY, AI_AGG...); turn them back into plain
    calls, arguments in order, so every AI function is bound by its own spec."""
    for node in list(tree.walk()):
        if isinstance(node, exp.Func) and not isinstance(node, exp.Anonymous) and get_spec(node.sql_name()):
            arguments: list[exp.Expr] = []
            for key in node.arg_types:
                value = node.args.get(key)
                if isinstance(value, list):
                    arguments.extend(value)
                elif isinstance(value, exp.Expr):
                    arguments.append(value)
            replacement = exp.Anonymous(this=node.sql_name().lower(), expressions=arguments)
            if node is tree:
                return replacement
            node.replace(replacement)
    return tree


def _ai_calls(tree: exp.Expr) -> list[exp.Anonymous]:
    calls = [
        node
        for node in tree.find_all(exp.Anonymous)
        if (spec := get_spec(node.name)) and spec.kind != "table"
    ]
    return sorted(calls, key=lambda node: -len(ancestors(node)))  # innermost first


def _rewrite_statement(
    tree: exp.Expr, hooks: EngineHooks, meters: tuple[Meter, ...] | None, dialect: str, number: int
) -> PlannedStatement:
    bulk = BulkPlanner(hooks.is_table, hooks.volatile, hooks.shape, hooks.runtime().shares_answers)
    sites: list[tuple[int, CallSite]] = []
    tree = _expand_vector_search(_expand_forecast(tree, hooks), hooks)
    reading_order = {id(node): i for i, node in enumerate(tree.walk(bfs=False))}
    for call in _ai_calls(tree):
        spec = get_spec(call.name)
        assert spec is not None
        text = call.sql(writer(hooks.dialect), normalize_functions="lower")
        rewritten = _rewrite_call(spec, call, hooks, bulk, meters)
        if rewritten is not None:
            replacement, site = rewritten
            sites.append((reading_order[id(call)], CallSite(text, *site)))
            call.replace(replacement)
    prescores = tuple(bulk.finish())
    tree = lift_alias_references(tree)
    return PlannedStatement(
        to_engine(tree, dialect, hooks.dialect, number),
        prescores,
        tuple(site for _, site in sorted(sites, key=lambda s: s[0])),
    )


def bind_arguments(spec: FunctionSpec, call: exp.Anonymous) -> dict[str, exp.Expr]:
    """Positional and named (`=>`, `:=`) arguments, checked against the spec."""
    bound: dict[str, exp.Expr] = {}
    positional_done = False
    for index, arg in enumerate(call.expressions):
        if isinstance(arg, exp.Kwarg | exp.PropertyEQ):
            positional_done = True
            param = spec.param(arg.this.name)
            if param is None:
                names = ", ".join(p.name for p in spec.params)
                raise ArgumentError(
                    f"{spec.name} has no argument {arg.this.name!r} (in {call.sql('duckdb')}). Arguments: {names}."
                )
            name, value = param.name, arg.expression
        else:
            if positional_done:
                raise ArgumentError(f"In {call.sql('duckdb')}: a positional argument follows a named one.")
            if index >= len(spec.params):
                raise ArgumentError(f"{spec.signature} takes at most {len(spec.params)} arguments; got more.")
            name, value = spec.params[index].name, arg
        if name in bound:
            raise ArgumentError(f"In {call.sql('duckdb')}: argument {name!r} is given twice.")
        bound[name] = value
    missing = [p.name for p in spec.params if p.required and p.name not in bound]
    if missing:
        raise ArgumentError(f"{spec.signature}: missing {', '.join(missing)} in {call.sql('duckdb')}.")
    return bound


def _constant(spec: FunctionSpec, name: str, value: exp.Expr | None, hooks: EngineHooks) -> Any:
    param = spec.param(name)
    if value is None or isinstance(value, exp.Null):
        return param.default if param is not None and param.has_default else None
    if isinstance(value, exp.Literal) and value.is_string:
        return value.this
    if isinstance(value, exp.Boolean):
        return value.this
    if value.find(exp.Column) is not None:
        raise ArgumentError(f"{spec.name}: argument {name!r} must be a constant, not {value.sql('duckdb')}.")
    try:
        return hooks.evaluate(value.sql("duckdb"))
    except AifuncsError:
        raise
    except Exception as error:
        raise ArgumentError(
            f"{spec.name}: cannot evaluate argument {name!r} ({value.sql('duckdb')}): {error}"
        ) from None


def _rewrite_call(
    spec: FunctionSpec,
    call: exp.Anonymous,
    hooks: EngineHooks,
    bulk: BulkPlanner,
    meters: tuple[Meter, ...] | None,
) -> tuple[exp.Expr, tuple[CallSpec, str | None, str | None, bool]] | None:
    args = bind_arguments(spec, call)
    if spec.kind == "task":
        return _rewrite_task(spec, call, args, hooks, bulk, meters)
    function = call.meta.get(FUNCTION_META, spec.name)
    if spec.kind == "embed":  # an ai_query of the embedding endpoint, with a text request
        args = {
            "endpoint": _endpoint_literal(spec, args, hooks, "embedding"),
            "request": _text(args["content"]),
        }
        spec = get_spec("ai_query") or spec
    if spec.kind == "document":  # an ai_query of the document endpoint, with the file's bytes
        args = {
            "endpoint": _endpoint_literal(spec, args, hooks, "document"),
            "request": exp.cast(args["content"].copy(), exp.DataType.build("BINARY", dialect="databricks")),
        }
        spec = get_spec("ai_query") or spec
    if spec.kind == "http":  # an ai_query of the connection, with the request's parts as a struct
        conn = _constant(spec, "conn", args["conn"], hooks)
        if not isinstance(conn, str):
            raise ArgumentError(f"http_request: conn must be a connection's name, not {conn!r}.")
        args = {
            "endpoint": exp.Literal.string(conn),
            "request": _http_request(args),
            "cache": exp.false(),
        }
        spec = get_spec("ai_query") or spec
    endpoint = args["endpoint"]
    if not (isinstance(endpoint, exp.Literal) and endpoint.is_string):
        return None  # a per-row endpoint: left to the generic function, which resolves each row
    request = args["request"]
    probe = _probe(call, request, hooks.dialect)
    request_ddl = _probe_type(_probe(call, request, hooks.dialect, filtered=False), hooks)
    request_type: pa.DataType | None = arrow_type(request_ddl) if request_ddl else None
    fail_on_error = _constant(spec, "failOnError", args.get("failOnError"), hooks)
    if not isinstance(fail_on_error, bool):
        raise ArgumentError(f"{spec.name}: failOnError must be true or false, not {fail_on_error!r}.")
    parameters = _constant(spec, "modelParameters", args.get("modelParameters"), hooks)
    if parameters is not None and not isinstance(parameters, dict):
        raise ArgumentError(f"{spec.name}: modelParameters must be a struct or map, not {parameters!r}.")
    cache = _constant(spec, "cache", args.get("cache"), hooks)
    if cache is not None and not isinstance(cache, bool):
        raise ArgumentError(f"{spec.name}: cache must be true or false, not {cache!r}.")
    call_spec = bind_call(
        function,
        endpoint.this,
        request_type,
        return_type=_constant(spec, "returnType", args.get("returnType"), hooks),
        fail_on_error=fail_on_error,
        model_parameters=parameters,
        response_format=_json_text(_constant(spec, "responseFormat", args.get("responseFormat"), hooks)),
        cache=cache,
        session=hooks.session,
        meters=meters,
    )
    if function == "http_request" and call_spec.endpoint.kind != "http":
        raise ArgumentError(
            f"http_request needs a connection (an endpoint of kind http); {endpoint.this!r} is a"
            f" {call_spec.endpoint.kind} endpoint. Create one with aifuncs.endpoints.create(NAME, kind='http',"
            " base_url=...)."
        )
    if function == "ai_embed" and not call_spec.result_type.endswith("[]"):
        raise ArgumentError(
            f"ai_embed needs an embedding endpoint; {endpoint.this!r} answers {call_spec.result_type}. Pass"
            " endpoint => 'NAME' of an embedding model, or set the default embedding endpoint."
        )
    site = (call_spec, probe if request_ddl else None, request_ddl)

    def streamed() -> exp.Expr:
        function = hooks.register(call_spec, request_ddl)
        argument = request.copy() if request_ddl else exp.func("to_json", request.copy())
        return exp.Anonymous(this=function, expressions=[argument])

    if (
        hooks.bulk
        and request_ddl
        and (column := bulk.try_add(call, request, call_spec, streamed)) is not None
    ):
        return column, (*site, True)
    return streamed(), (*site, False)


def _rewrite_task(
    spec: FunctionSpec,
    call: exp.Anonymous,
    args: dict[str, exp.Expr],
    hooks: EngineHooks,
    bulk: BulkPlanner,
    meters: tuple[Meter, ...] | None,
) -> tuple[exp.Expr, tuple[CallSpec, str | None, str | None, bool]]:
    """A task function: its constants bound into a prompt and parser, sent to a chat endpoint row by row."""
    text_param = next(p for p in spec.params if p.kind == "column")
    constants = {
        p.name: _constant(spec, p.name, args.get(p.name), hooks)
        for p in spec.params
        if p.kind == "constant" and p.name != "endpoint" and (p.name in args or p.has_default)
    }
    task = bind_task(spec, constants)
    role = "chat"
    if (
        "endpoint" not in args
        and task.answer == "label"
        and hooks.catalog().configured_default("chat") is None
    ):
        # Offline, one-label tasks go to the embedding model: on tests/data/support_messages.csv it beat the
        # small chat model by far (see bench_quality.py in the README).
        role = "embedding"
    endpoint = _endpoint_literal(spec, args, hooks, role).this
    provider = hooks.runtime().provider(hooks.catalog().authorize(endpoint, "query"))
    # A label task may also be answered by an embedding model: the label whose embedding is nearest the text's.
    by_embedding = (
        not provider.returns_text and task.answer == "label" and (provider.output_type() or "").endswith("[]")
    )
    if not provider.returns_text and not by_embedding:
        raise ArgumentError(
            f"{spec.name} needs a chat endpoint{' (or, for one label, an embedding endpoint)' if spec.answer == 'label' else ''};"
            f" {endpoint!r} is a {provider.endpoint.kind} endpoint that does not write text. Pass endpoint => 'NAME'"
            " of a chat model, or set the default chat endpoint."
        )
    call_spec = bind_call(
        spec.name,
        endpoint,
        pa.list_(pa.string()) if spec.aggregate else pa.string(),
        return_type=task.result_type,
        fail_on_error=False,
        model_parameters=None if by_embedding else {"temperature": 0, "max_tokens": task.max_tokens},
        response_format=None if by_embedding else task.schema,
        task=task,
        session=hooks.session,
        meters=meters,
    )
    if spec.aggregate:  # the group's values as a list, NULLs left out (DuckDB's array_agg keeps them)
        values = exp.cast(args[text_param.name].copy(), "VARCHAR")
        request: exp.Expr = exp.Filter(
            this=exp.ArrayAgg(this=values),
            expression=exp.Where(this=exp.Not(this=exp.Is(this=values.copy(), expression=exp.null()))),
        )
        request_ddl = "VARCHAR[]"
    else:
        request, request_ddl = _text(args[text_param.name]), "VARCHAR"
    probe = _probe(call, request, hooks.dialect)

    def streamed() -> exp.Expr:
        return exp.Anonymous(this=hooks.register(call_spec, request_ddl), expressions=[request.copy()])

    if (
        hooks.bulk
        and not spec.aggregate
        and (column := bulk.try_add(call, request, call_spec, streamed)) is not None
    ):
        return column, (call_spec, probe, request_ddl, True)
    return streamed(), (call_spec, probe, request_ddl, False)


# The parts of an http_request, in the order and types the http provider reads them.
_HTTP_PARTS = (("method", "STRING"), ("path", "STRING"), ("headers", "MAP<STRING, STRING>"),
               ("params", "MAP<STRING, STRING>"), ("json", "STRING"))  # fmt: skip


def _http_request(args: dict[str, exp.Expr]) -> exp.Expr:
    """http_request's arguments as one request struct (absent parts NULL, every part of a fixed type)."""
    fields = []
    for name, type_text in _HTTP_PARTS:
        value = args.get(name)
        typed = exp.cast(
            value.copy() if value is not None else exp.null(),
            exp.DataType.build(type_text, dialect="databricks"),
        )
        fields.append(exp.PropertyEQ(this=exp.to_identifier(name), expression=typed))
    return exp.Struct(expressions=fields)


def _text(value: exp.Expr) -> exp.Expr:
    """A request as text; NULL and blank texts become NULL, answered without a model call."""
    text = exp.cast(value.copy(), "VARCHAR")
    blank = exp.EQ(this=exp.func("trim", text.copy()), expression=exp.Literal.string(""))
    return exp.Case(ifs=[exp.If(this=blank, true=exp.null())], default=text)


def _endpoint_literal(
    spec: FunctionSpec, args: dict[str, exp.Expr], hooks: EngineHooks, role: str
) -> exp.Expr:
    named = _constant(spec, "endpoint", args.get("endpoint"), hooks)
    if named is not None and not isinstance(named, str):
        raise ArgumentError(f"{spec.name}: endpoint must be an endpoint's name, not {named!r}.")
    return exp.Literal.string(named or hooks.catalog().default(role).name)


def _expand_similarity(tree: exp.Expr, cosine_similarity: str) -> exp.Expr:
    """ai_similarity(a, b) -> list_cosine_similarity(ai_embed(a), ai_embed(b)): two embedding calls the
    runtime de-duplicates and caches, and a vector function the engine has (DuckDB's own, or Spark's UDF)."""
    for call in list(tree.find_all(exp.Anonymous)):
        spec = get_spec(call.name)
        if spec is None or spec.kind != "similarity":
            continue
        args = bind_arguments(spec, call)
        extra = (
            [exp.Kwarg(this=exp.var("endpoint"), expression=args["endpoint"].copy())]
            if "endpoint" in args
            else []
        )
        embeds = [
            exp.Anonymous(this="ai_embed", expressions=[args[name].copy(), *extra])
            for name in ("expr1", "expr2")
        ]
        replacement = exp.Anonymous(this=cosine_similarity, expressions=embeds)
        if call is tree:
            return replacement
        call.replace(replacement)
    return tree


def _expand_forecast(tree: exp.Expr, hooks: EngineHooks) -> exp.Expr:
    """FROM ai_forecast(TABLE(t), ...): a query that sends each group's history to the forecast endpoint
    and unnests the answers (`_forecast.py`)."""
    for table in list(tree.find_all(exp.Table)):
        call = table.this
        if not (isinstance(call, exp.Anonymous) and call.name.lower() == "ai_forecast"):
            continue
        spec = get_spec("ai_forecast")
        assert spec is not None
        args = bind_arguments(spec, call)
        observed = args["observed"]
        inner = (
            observed.expressions[0]
            if isinstance(observed, exp.Anonymous)
            and observed.name.upper() == "TABLE"
            and observed.expressions
            else None
        )
        if isinstance(inner, exp.Column):
            source = inner.sql(writer(hooks.dialect))
        elif isinstance(inner, exp.Query):
            source = f"({inner.sql(writer(hooks.dialect))})"
        else:
            raise ArgumentError(
                "ai_forecast reads its history from TABLE(name) or TABLE(SELECT ...), e.g."
                " ai_forecast(TABLE(sales), horizon => '2026-12-31', time_col => 'day', value_col => 'revenue')."
            )
        constant = {
            p.name: _constant(spec, p.name, args.get(p.name), hooks)
            for p in spec.params
            if p.kind == "constant"
        }
        time_col = constant["time_col"]
        if not isinstance(time_col, str) or not time_col:
            raise ArgumentError(f"ai_forecast: time_col is a column name, not {time_col!r}.")
        horizon = constant["horizon"]
        if horizon is None or isinstance(horizon, bool | dict | list):
            raise ArgumentError(f"ai_forecast: horizon is a date or timestamp, not {horizon!r}.")
        width = constant["prediction_interval_width"]
        if not isinstance(width, int | float) or not 0 < width < 1:
            raise ArgumentError(f"ai_forecast: prediction_interval_width is between 0 and 1, not {width!r}.")
        check_forecast_settings(
            str(constant["frequency"] or "auto"), _json_text(constant["parameters"]) or "{}"
        )
        forecast = Forecast(
            observed=source,
            time_col=time_col,
            value_cols=forecast_names(constant["value_col"], "value_col", True),
            group_cols=forecast_names(constant["group_col"], "group_col", False),
            parameters={
                "horizon": str(horizon),
                "prediction_interval_width": float(width),
                "frequency": str(constant["frequency"] or "auto"),
                "seed": constant["seed"],
                "parameters": _json_text(constant["parameters"]) or "{}",
            },
            endpoint=_endpoint_literal(spec, args, hooks, "forecast").this,
        )
        rows = exp.Subquery(this=inner.copy()) if isinstance(inner, exp.Query) else exp.to_table(source)
        probe = exp.select(exp.column(time_col, quoted=True)).from_(rows)
        described = _probe_type(probe.sql(writer(hooks.dialect)), hooks)
        replacement = forecast_query(forecast, forecast_time_type(described, time_col), hooks.dialect)
        alias = table.args.get("alias") or exp.TableAlias(this=exp.to_identifier("ai_forecast"))
        table.replace(exp.Subquery(this=replacement, alias=alias))
    return tree


def _expand_vector_search(tree: exp.Expr, hooks: EngineHooks) -> exp.Expr:
    """FROM vector_search(index => ..., query => ..., num_results => k): DuckDB has no Python table functions,
    so it becomes a query over the index table, nearest first, the query embedded once (a scalar subquery)."""
    for table in list(tree.find_all(exp.Table)):
        call = table.this
        spec = get_spec(call.name) if isinstance(call, exp.Anonymous) else None
        if spec is None or spec.name != "vector_search":
            continue
        args = bind_arguments(spec, call)
        name, text, count = (
            _constant(spec, p, args.get(p), hooks) for p in ("index", "query", "num_results")
        )
        if not isinstance(name, str) or not isinstance(text, str) or not isinstance(count, int) or count < 1:
            raise ArgumentError(
                "vector_search takes index => 'name', query => 'text' and num_results => a positive number."
            )
        if hooks.vector_index is None:
            raise ArgumentError(
                f"vector_search is not available on {hooks.name}: its indexes live in DuckDB databases. Run the"
                " search with aifuncs.sql on DuckDB, or compare embeddings with ai_similarity."
            )
        index = hooks.vector_index(name)
        if index is None:
            raise ArgumentError(
                f"There is no vector index {name!r} in this database. Create it with"
                f" aifuncs.index.create(con, {name!r}, table=..., column=...) or `aifuncs index create`."
            )
        endpoint = index.endpoint
        embed = exp.Anonymous(
            this="ai_embed",
            expressions=[
                exp.Literal.string(text),
                exp.Kwarg(this=exp.var("endpoint"), expression=exp.Literal.string(endpoint)),
            ],
        )
        query_vector = exp.Subquery(this=exp.select(embed))
        embedding = exp.column(index.embedding_column)
        score = exp.func("list_cosine_similarity", embedding, query_vector).as_("search_score")
        rows = (
            exp.Select(expressions=[exp.Star(except_=[embedding.copy()]), score])
            .from_(index.table)
            .order_by(exp.Ordered(this=exp.column("search_score"), desc=True))
            .limit(count)
        )
        alias = table.args.get("alias") or exp.TableAlias(this=exp.to_identifier("vector_search"))
        table.replace(exp.Subquery(this=rows, alias=alias))
    return tree


def _json_text(value: Any) -> str | None:
    return value if value is None or isinstance(value, str) else json.dumps(value)


def _probe_type(probe: str, hooks: EngineHooks) -> str | None:
    """The type of the request at the call site (DuckDB DDL, the planner's type language), found by the
    engine's analysis of a query over the call's scope.

    None when the scope cannot be isolated (e.g. a correlated subquery); the call then passes its
    request as JSON, which works for every type at some cost in speed.
    """
    try:
        return hooks.describe(probe)
    except Exception:
        return None


def _probe(call: exp.Expr, request: exp.Expr, dialect: str, *, filtered: bool = True) -> str:
    """A query whose one column (`__aifuncs_request`) is the call's request, over the call's scope; without
    the scope's filter where only its type is wanted (a filter may read answers scored ahead of the query)."""
    probe = exp.Select(expressions=[request.copy().as_(PROBE_ALIAS)])
    scope = call.find_ancestor(exp.Select)
    if scope is not None:
        for key in ("from_", "joins", "laterals"):
            if scope.args.get(key):
                probe.set(
                    key, scope.args[key].copy() if key != "joins" else [j.copy() for j in scope.args[key]]
                )
        # The rows that reach the call: a conjunct holding the call itself cannot filter them.
        where = scope.args.get("where")
        condition = where.this if where is not None else None
        conjuncts = list(condition.flatten()) if isinstance(condition, exp.And) else [condition]
        kept = [c for c in conjuncts if c is not None and not any(n is call for n in c.walk())]
        if kept and filtered:
            probe.set("where", exp.Where(this=exp.and_(*(c.copy() for c in kept))))
        if request.find(exp.AggFunc) is not None and scope.args.get("group"):
            probe.set("group", scope.args["group"].copy())
    ctes = [
        cte.copy()
        for node in reversed(ancestors(call))
        if (w := node.args.get("with_"))
        for cte in w.expressions
    ]
    if ctes:
        probe.set("with_", exp.With(expressions=ctes))
    return probe.sql(writer(dialect), copy=False)  # built of copies: the generator may use it as it is
