"""The planner: parse with sqlglot, find AI calls, bind and type them, rewrite them into UDF calls."""

from __future__ import annotations

from aifuncs.planner._bulk import Prescore, TableShape
from aifuncs.planner._rewrite import (
    CallSite,
    EngineHooks,
    PlannedStatement,
    VectorIndex,
    bind_arguments,
    rewrite,
    split_statements,
)
from aifuncs.session import bind_call, check_request  # bound below the planner; kept here for callers

__all__ = [
    "CallSite",
    "EngineHooks",
    "PlannedStatement",
    "Prescore",
    "TableShape",
    "VectorIndex",
    "bind_arguments",
    "bind_call",
    "check_request",
    "rewrite",
    "split_statements",
]
