"""ai_similarity(a, b) -> list_cosine_similarity(ai_embed(a), ai_embed(b)): two embedding calls the runtime
de-duplicates and caches, and a vector function the engine has (DuckDB's own, or Spark's UDF)."""

from __future__ import annotations

from sqlglot import exp

from aifuncs.functions import FunctionSpec
from aifuncs.planner._hooks import EngineHooks
from aifuncs.planner._kinds._registry import macro_kind


@macro_kind("similarity")
def expand_similarity(
    call: exp.Anonymous, spec: FunctionSpec, args: dict[str, exp.Expr], hooks: EngineHooks
) -> exp.Expr:
    extra = (
        [exp.Kwarg(this=exp.var("endpoint"), expression=args["endpoint"].copy())]
        if "endpoint" in args
        else []
    )
    embeds = [
        exp.Anonymous(this="ai_embed", expressions=[args[name].copy(), *extra]) for name in ("expr1", "expr2")
    ]
    return exp.Anonymous(this=hooks.cosine_similarity, expressions=embeds)
