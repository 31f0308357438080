"""http_request: an ai_query of a connection (an endpoint of kind http), the request's parts as one struct,
never answered from the store."""

from __future__ import annotations

from sqlglot import exp

from aifuncs.errors import ArgumentError
from aifuncs.planner._args import constant
from aifuncs.planner._kinds._query import model_call, query_spec
from aifuncs.planner._kinds._registry import Call, Rewritten, call_kind
from aifuncs.runtime import CallSpec

# The parts of an http_request, in the order and types the http provider reads them.
_HTTP_PARTS = (("method", "STRING"), ("path", "STRING"), ("headers", "MAP<STRING, STRING>"),
               ("params", "MAP<STRING, STRING>"), ("json", "STRING"))  # fmt: skip


@call_kind("http")
def rewrite_http(call: Call) -> Rewritten | None:
    conn = constant(call.spec, "conn", call.args["conn"], call.hooks)
    if not isinstance(conn, str):
        raise ArgumentError(f"http_request: conn must be a connection's name, not {conn!r}.")
    args = {"endpoint": exp.Literal.string(conn), "request": _http_request(call.args), "cache": exp.false()}

    def is_connection(bound: CallSpec) -> None:
        if bound.endpoint.kind != "http":
            raise ArgumentError(
                f"http_request needs a connection (an endpoint of kind http); {conn!r} is a"
                f" {bound.endpoint.kind} endpoint. Create one with aifuncs.endpoints.create(NAME, kind='http',"
                " base_url=...)."
            )

    return model_call(call, query_spec(), args, is_connection)


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
