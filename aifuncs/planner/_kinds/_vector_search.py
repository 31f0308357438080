"""FROM vector_search(index => ..., query => ..., num_results => k): DuckDB has no Python table functions, so
it becomes a query over the index table, nearest first, the query embedded once (a scalar subquery)."""

from __future__ import annotations

from sqlglot import exp

from aifuncs.errors import ArgumentError
from aifuncs.functions import FunctionSpec
from aifuncs.planner._args import constant
from aifuncs.planner._hooks import EngineHooks
from aifuncs.planner._kinds._registry import table_function


@table_function("vector_search")
def expand_vector_search(
    call: exp.Anonymous, spec: FunctionSpec, args: dict[str, exp.Expr], hooks: EngineHooks
) -> exp.Expr:
    name, text, count = (constant(spec, p, args.get(p), hooks) for p in ("index", "query", "num_results"))
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
    embed = exp.Anonymous(
        this="ai_embed",
        expressions=[
            exp.Literal.string(text),
            exp.Kwarg(this=exp.var("endpoint"), expression=exp.Literal.string(index.endpoint)),
        ],
    )
    query_vector = exp.Subquery(this=exp.select(embed))
    embedding = exp.column(index.embedding_column)
    score = exp.func("list_cosine_similarity", embedding, query_vector).as_("search_score")
    return (
        exp.Select(expressions=[exp.Star(except_=[embedding.copy()]), score])
        .from_(index.table)
        .order_by(exp.Ordered(this=exp.column("search_score"), desc=True))
        .limit(count)
    )
