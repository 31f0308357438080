"""The planner's handlers, one per kind of AI function, found by name (as sqlglot finds a generator's
transform by node type): the rewriter walks a statement and asks the registry what each call becomes.

Three stages, in this order:
- macros (by the spec's kind): calls written as other AI calls before any is bound (ai_similarity);
- table functions (by the function's name, each a kind of its own): a FROM item replaced by a query
  (ai_forecast, vector_search), in the order they were registered;
- calls (by the spec's kind): one AI call bound and replaced by a UDF, or by a column scored ahead.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

from sqlglot import exp

from aifuncs.errors import SqlError
from aifuncs.functions import FunctionSpec
from aifuncs.planner._bulk import BulkPlanner
from aifuncs.planner._hooks import EngineHooks
from aifuncs.runtime import CallSpec, Meter

FUNCTION_META = "aifuncs_function"  # on an AI call the planner made: the function to name it by


@dataclass(frozen=True)
class Call:
    """One AI call as a handler sees it: the node, its spec and bound arguments, and where it is planned."""

    node: exp.Anonymous
    spec: FunctionSpec
    args: dict[str, exp.Expr]
    hooks: EngineHooks
    bulk: BulkPlanner
    meters: tuple[Meter, ...] | None  # what the call is counted against (None: the session's)


@dataclass(frozen=True)
class Rewritten:
    """What a call became: the expression in its place, and the call site EXPLAIN shows."""

    expression: exp.Expr
    call: CallSpec
    probe: str | None
    request_type: str | None
    bulk: bool


CallHandler = Callable[[Call], Rewritten | None]  # None: left to the generic per-row function
TableHandler = Callable[[exp.Anonymous, FunctionSpec, dict[str, exp.Expr], EngineHooks], exp.Expr]
MacroHandler = Callable[[exp.Anonymous, FunctionSpec, dict[str, exp.Expr], EngineHooks], exp.Expr]

_CALLS: dict[str, CallHandler] = {}
_TABLES: dict[str, TableHandler] = {}
_MACROS: dict[str, MacroHandler] = {}


def call_kind(kind: str) -> Callable[[CallHandler], CallHandler]:
    def register(handler: CallHandler) -> CallHandler:
        _CALLS[kind] = handler
        return handler

    return register


def table_function(name: str) -> Callable[[TableHandler], TableHandler]:
    def register(handler: TableHandler) -> TableHandler:
        _TABLES[name] = handler
        return handler

    return register


def macro_kind(kind: str) -> Callable[[MacroHandler], MacroHandler]:
    def register(handler: MacroHandler) -> MacroHandler:
        _MACROS[kind] = handler
        return handler

    return register


def call_handler(spec: FunctionSpec) -> CallHandler:
    found = _CALLS.get(spec.kind)
    if found is None:
        raise SqlError(
            f"{spec.name} is a function of kind {spec.kind!r}, which cannot be called in place here."
        )
    return found


def macro_handler(spec: FunctionSpec) -> MacroHandler | None:
    return _MACROS.get(spec.kind)


def table_handlers() -> Iterator[tuple[str, TableHandler]]:
    return iter(list(_TABLES.items()))
