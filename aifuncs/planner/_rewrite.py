"""Rewrite a query's statements: each AI call replaced by a UDF specialised for its call site.

DuckDB fixes a Python UDF's types at registration, so `ai_query('ep', x, returnType => 'DOUBLE')` cannot
be one function with a per-call type. The planner finds each AI call with sqlglot and asks the handler of
its kind (`_kinds/`: ai_query, embeddings, documents, HTTP, tasks; similarity as embeddings; ai_forecast and
vector_search as queries) what it becomes: a UDF registered for exactly that call (one request type in, one
result type out, options bound in a closure), or a column scored ahead of the statement (`_bulk.py`).
"""

from __future__ import annotations

import re

import sqlglot
from sqlglot import exp
from sqlglot.tokens import TokenType

from aifuncs.errors import SqlError
from aifuncs.functions import all_specs, get_spec
from aifuncs.planner._aliases import lift_alias_references
from aifuncs.planner._args import PROBE_ALIAS, bind_arguments
from aifuncs.planner._bulk import BulkPlanner
from aifuncs.planner._dialects import adapt, reader, to_engine, writer
from aifuncs.planner._hooks import CallSite, EngineHooks, PlannedStatement, VectorIndex
from aifuncs.planner._kinds import Call, call_handler, macro_handler, table_handlers
from aifuncs.planner._reads import ancestors
from aifuncs.runtime import Meter

__all__ = [
    "PROBE_ALIAS",
    "CallSite",
    "EngineHooks",
    "PlannedStatement",
    "VectorIndex",
    "bind_arguments",
    "rewrite",
    "split_statements",
]


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
            _expand_macros(adapt(_as_anonymous(s), dialect, n, hooks.dialect), hooks),
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


def _expand_macros(tree: exp.Expr, hooks: EngineHooks) -> exp.Expr:
    """Calls written as other AI calls (ai_similarity as two ai_embed), before any call is bound."""
    for call in list(tree.find_all(exp.Anonymous)):
        spec = get_spec(call.name)
        handler = macro_handler(spec) if spec is not None else None
        if spec is None or handler is None:
            continue
        replacement = handler(call, spec, bind_arguments(spec, call), hooks)
        if call is tree:
            return replacement
        call.replace(replacement)
    return tree


def _expand_tables(tree: exp.Expr, hooks: EngineHooks) -> exp.Expr:
    """Table functions in FROM (ai_forecast, vector_search): each replaced by the query its handler writes,
    under the alias written (else the function's name)."""
    for name, handler in table_handlers():
        for table in list(tree.find_all(exp.Table)):
            call = table.this
            spec = get_spec(call.name) if isinstance(call, exp.Anonymous) else None
            if spec is None or spec.name != name:
                continue
            assert isinstance(call, exp.Anonymous)
            replacement = handler(call, spec, bind_arguments(spec, call), hooks)
            alias = table.args.get("alias") or exp.TableAlias(this=exp.to_identifier(name))
            table.replace(exp.Subquery(this=replacement, alias=alias))
    return tree


def _rewrite_statement(
    tree: exp.Expr, hooks: EngineHooks, meters: tuple[Meter, ...] | None, dialect: str, number: int
) -> PlannedStatement:
    bulk = BulkPlanner(hooks.is_table, hooks.volatile, hooks.shape, hooks.runtime().shares_answers)
    sites: list[tuple[int, CallSite]] = []
    tree = _expand_tables(tree, hooks)
    reading_order = {id(node): i for i, node in enumerate(tree.walk(bfs=False))}
    for node in _ai_calls(tree):
        spec = get_spec(node.name)
        assert spec is not None
        text = node.sql(writer(hooks.dialect), normalize_functions="lower")
        call = Call(node, spec, bind_arguments(spec, node), hooks, bulk, meters)
        rewritten = call_handler(spec)(call)
        if rewritten is not None:
            site = CallSite(text, rewritten.call, rewritten.probe, rewritten.request_type, rewritten.bulk)
            sites.append((reading_order[id(node)], site))
            node.replace(rewritten.expression)
    prescores = tuple(bulk.finish())
    tree = lift_alias_references(tree)
    return PlannedStatement(
        to_engine(tree, dialect, hooks.dialect, number),
        prescores,
        tuple(site for _, site in sorted(sites, key=lambda s: s[0])),
    )
