"""ai_query: a request sent to a named endpoint, one UDF per call site (or a column scored ahead).

Embedding, document and HTTP calls are ai_query calls with a request of their own (`model_call`)."""

from __future__ import annotations

from collections.abc import Callable

import pyarrow as pa
from sqlglot import exp

from aifuncs._types import arrow_type
from aifuncs.errors import ArgumentError
from aifuncs.functions import FunctionSpec, get_spec
from aifuncs.planner._args import constant, json_text, probe, probe_type
from aifuncs.planner._kinds._registry import FUNCTION_META, Call, Rewritten, call_kind
from aifuncs.runtime import CallSpec
from aifuncs.session import bind_call


@call_kind("query")
def rewrite_query(call: Call) -> Rewritten | None:
    return model_call(call, call.spec, call.args)


def query_spec() -> FunctionSpec:
    found = get_spec("ai_query")
    assert found is not None  # shipped with the package
    return found


def model_call(
    call: Call,
    spec: FunctionSpec,
    args: dict[str, exp.Expr],
    check: Callable[[CallSpec], None] | None = None,
) -> Rewritten | None:
    """`args` as ai_query's (endpoint, request and options) bound for the endpoint; `check` refuses a bound
    call its function cannot use before anything is registered. None for a per-row endpoint."""
    hooks = call.hooks
    function = call.node.meta.get(FUNCTION_META, call.spec.name)
    endpoint = args["endpoint"]
    if not (isinstance(endpoint, exp.Literal) and endpoint.is_string):
        return None  # a per-row endpoint: left to the generic function, which resolves each row
    request = args["request"]
    filtered_probe = probe(call.node, request, hooks.dialect)
    request_ddl = probe_type(probe(call.node, request, hooks.dialect, filtered=False), hooks)
    request_type: pa.DataType | None = arrow_type(request_ddl) if request_ddl else None
    fail_on_error = constant(spec, "failOnError", args.get("failOnError"), hooks)
    if not isinstance(fail_on_error, bool):
        raise ArgumentError(f"{spec.name}: failOnError must be true or false, not {fail_on_error!r}.")
    parameters = constant(spec, "modelParameters", args.get("modelParameters"), hooks)
    if parameters is not None and not isinstance(parameters, dict):
        raise ArgumentError(f"{spec.name}: modelParameters must be a struct or map, not {parameters!r}.")
    cache = constant(spec, "cache", args.get("cache"), hooks)
    if cache is not None and not isinstance(cache, bool):
        raise ArgumentError(f"{spec.name}: cache must be true or false, not {cache!r}.")
    call_spec = bind_call(
        function,
        endpoint.this,
        request_type,
        return_type=constant(spec, "returnType", args.get("returnType"), hooks),
        fail_on_error=fail_on_error,
        model_parameters=parameters,
        response_format=json_text(constant(spec, "responseFormat", args.get("responseFormat"), hooks)),
        cache=cache,
        session=hooks.session,
        meters=call.meters,
    )
    if check is not None:
        check(call_spec)

    def streamed() -> exp.Expr:
        name = hooks.register(call_spec, request_ddl)
        argument = request.copy() if request_ddl else exp.func("to_json", request.copy())
        return exp.Anonymous(this=name, expressions=[argument])

    site_probe = filtered_probe if request_ddl else None
    if (
        hooks.bulk
        and request_ddl
        and (column := call.bulk.try_add(call.node, request, call_spec, streamed)) is not None
    ):
        return Rewritten(column, call_spec, site_probe, request_ddl, True)
    return Rewritten(streamed(), call_spec, site_probe, request_ddl, False)
