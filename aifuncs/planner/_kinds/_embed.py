"""ai_embed: an ai_query of the embedding endpoint (named, or the default), with a text request."""

from __future__ import annotations

from aifuncs.errors import ArgumentError
from aifuncs.planner._args import endpoint_literal, text
from aifuncs.planner._kinds._query import model_call, query_spec
from aifuncs.planner._kinds._registry import Call, Rewritten, call_kind
from aifuncs.runtime import CallSpec


@call_kind("embed")
def rewrite_embed(call: Call) -> Rewritten | None:
    args = {
        "endpoint": endpoint_literal(call.spec, call.args, call.hooks, "embedding"),
        "request": text(call.args["content"]),
    }
    endpoint = args["endpoint"].this

    def answers_vectors(bound: CallSpec) -> None:
        if not bound.result_type.endswith("[]"):
            raise ArgumentError(
                f"{call.spec.name} needs an embedding endpoint; {endpoint!r} answers {bound.result_type}. Pass"
                " endpoint => 'NAME' of an embedding model, or set the default embedding endpoint."
            )

    return model_call(call, query_spec(), args, answers_vectors)
