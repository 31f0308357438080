"""ai_parse_document: an ai_query of the document endpoint (named, or the default), with the file's bytes."""

from __future__ import annotations

from sqlglot import exp

from aifuncs.planner._args import endpoint_literal
from aifuncs.planner._kinds._query import model_call, query_spec
from aifuncs.planner._kinds._registry import Call, Rewritten, call_kind


@call_kind("document")
def rewrite_document(call: Call) -> Rewritten | None:
    args = {
        "endpoint": endpoint_literal(call.spec, call.args, call.hooks, "document"),
        "request": exp.cast(call.args["content"].copy(), exp.DataType.build("BINARY", dialect="databricks")),
    }
    return model_call(call, query_spec(), args)
