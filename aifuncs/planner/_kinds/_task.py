"""Task functions (ai_classify, ai_extract, ai_agg...): their constants bound into a prompt and parser, sent
to a chat endpoint row by row (or, for one label, to an embedding endpoint)."""

from __future__ import annotations

import pyarrow as pa
from sqlglot import exp

from aifuncs.errors import ArgumentError
from aifuncs.functions.tasks import bind_task
from aifuncs.planner._args import constant, endpoint_literal, probe, text
from aifuncs.planner._kinds._registry import Call, Rewritten, call_kind
from aifuncs.session import bind_call


@call_kind("task")
def rewrite_task(call: Call) -> Rewritten:
    spec, args, hooks = call.spec, call.args, call.hooks
    text_param = next(p for p in spec.params if p.kind == "column")
    constants = {
        p.name: constant(spec, p.name, args.get(p.name), hooks)
        for p in spec.params
        if p.kind == "constant" and p.name != "endpoint" and (p.name in args or p.has_default)
    }
    task = bind_task(spec, constants)
    role = "chat"
    if (
        "endpoint" not in args
        and task.answer == "label"
        and hooks.catalog().configured_default("chat") is None
    ):
        # Offline, one-label tasks go to the embedding model: on tests/data/support_messages.csv it beat the
        # small chat model by far (see bench_quality.py in the README).
        role = "embedding"
    endpoint = endpoint_literal(spec, args, hooks, role).this
    provider = hooks.runtime().provider(hooks.catalog().authorize(endpoint, "query"))
    # A label task may also be answered by an embedding model: the label whose embedding is nearest the text's.
    by_embedding = (
        not provider.returns_text and task.answer == "label" and (provider.output_type() or "").endswith("[]")
    )
    if not provider.returns_text and not by_embedding:
        raise ArgumentError(
            f"{spec.name} needs a chat endpoint{' (or, for one label, an embedding endpoint)' if spec.answer == 'label' else ''};"
            f" {endpoint!r} is a {provider.endpoint.kind} endpoint that does not write text. Pass endpoint => 'NAME'"
            " of a chat model, or set the default chat endpoint."
        )
    call_spec = bind_call(
        spec.name,
        endpoint,
        pa.list_(pa.string()) if spec.aggregate else pa.string(),
        return_type=task.result_type,
        fail_on_error=False,
        model_parameters=None if by_embedding else {"temperature": 0, "max_tokens": task.max_tokens},
        response_format=None if by_embedding else task.schema,
        task=task,
        session=hooks.session,
        meters=call.meters,
    )
    if spec.aggregate:  # the group's values as a list, NULLs left out (DuckDB's array_agg keeps them)
        values = exp.cast(args[text_param.name].copy(), "VARCHAR")
        request: exp.Expr = exp.Filter(
            this=exp.ArrayAgg(this=values),
            expression=exp.Where(this=exp.Not(this=exp.Is(this=values.copy(), expression=exp.null()))),
        )
        request_ddl = "VARCHAR[]"
    else:
        request, request_ddl = text(args[text_param.name]), "VARCHAR"
    site_probe = probe(call.node, request, hooks.dialect)

    def streamed() -> exp.Expr:
        return exp.Anonymous(this=hooks.register(call_spec, request_ddl), expressions=[request.copy()])

    if (
        hooks.bulk
        and not spec.aggregate
        and (column := call.bulk.try_add(call.node, request, call_spec, streamed)) is not None
    ):
        return Rewritten(column, call_spec, site_probe, request_ddl, True)
    return Rewritten(streamed(), call_spec, site_probe, request_ddl, False)
