"""A call's arguments as its spec reads them: bound by position or name, constants evaluated, requests probed."""

from __future__ import annotations

import json
from typing import Any

from sqlglot import exp

from aifuncs.errors import AifuncsError, ArgumentError
from aifuncs.functions import FunctionSpec
from aifuncs.planner._dialects import writer
from aifuncs.planner._hooks import EngineHooks
from aifuncs.planner._reads import ancestors

PROBE_ALIAS = "__aifuncs_request"


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


def constant(spec: FunctionSpec, name: str, value: exp.Expr | None, hooks: EngineHooks) -> Any:
    """A constant argument's value (its default where it is absent or NULL), evaluated by the engine."""
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


def endpoint_literal(
    spec: FunctionSpec, args: dict[str, exp.Expr], hooks: EngineHooks, role: str
) -> exp.Expr:
    """The endpoint argument as a string literal: the one named, else the catalog's default for `role`."""
    named = constant(spec, "endpoint", args.get("endpoint"), hooks)
    if named is not None and not isinstance(named, str):
        raise ArgumentError(f"{spec.name}: endpoint must be an endpoint's name, not {named!r}.")
    return exp.Literal.string(named or hooks.catalog().default(role).name)


def text(value: exp.Expr) -> exp.Expr:
    """A request as text; NULL and blank texts become NULL, answered without a model call."""
    cast = exp.cast(value.copy(), "VARCHAR")
    blank = exp.EQ(this=exp.func("trim", cast.copy()), expression=exp.Literal.string(""))
    return exp.Case(ifs=[exp.If(this=blank, true=exp.null())], default=cast)


def json_text(value: Any) -> str | None:
    return value if value is None or isinstance(value, str) else json.dumps(value)


def probe_type(probe: str, hooks: EngineHooks) -> str | None:
    """The type of the request at the call site (DuckDB DDL, the planner's type language), found by the
    engine's analysis of a query over the call's scope.

    None when the scope cannot be isolated (e.g. a correlated subquery); the call then passes its
    request as JSON, which works for every type at some cost in speed.
    """
    try:
        return hooks.describe(probe)
    except Exception:
        return None


def probe(call: exp.Expr, request: exp.Expr, dialect: str, *, filtered: bool = True) -> str:
    """A query whose one column (`__aifuncs_request`) is the call's request, over the call's scope; without
    the scope's filter where only its type is wanted (a filter may read answers scored ahead of the query)."""
    query = exp.Select(expressions=[request.copy().as_(PROBE_ALIAS)])
    scope = call.find_ancestor(exp.Select)
    if scope is not None:
        for key in ("from_", "joins", "laterals"):
            if scope.args.get(key):
                query.set(
                    key, scope.args[key].copy() if key != "joins" else [j.copy() for j in scope.args[key]]
                )
        # The rows that reach the call: a conjunct holding the call itself cannot filter them.
        where = scope.args.get("where")
        condition = where.this if where is not None else None
        conjuncts = list(condition.flatten()) if isinstance(condition, exp.And) else [condition]
        kept = [c for c in conjuncts if c is not None and not any(n is call for n in c.walk())]
        if kept and filtered:
            query.set("where", exp.Where(this=exp.and_(*(c.copy() for c in kept))))
        if request.find(exp.AggFunc) is not None and scope.args.get("group"):
            query.set("group", scope.args["group"].copy())
    ctes = [
        cte.copy()
        for node in reversed(ancestors(call))
        if (w := node.args.get("with_"))
        for cte in w.expressions
    ]
    if ctes:
        query.set("with_", exp.With(expressions=ctes))
    return query.sql(writer(dialect), copy=False)  # built of copies: the generator may use it as it is
