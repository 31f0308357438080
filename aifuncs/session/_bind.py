"""Bind one AI call: resolve its endpoint, its result type, and check its request against the model."""

from __future__ import annotations

import dataclasses
import json
import logging
from typing import Any

import pyarrow as pa

from aifuncs._types import to_duckdb_type
from aifuncs.catalog import default_catalog
from aifuncs.errors import AifuncsError, ConfigError, RequestMismatch
from aifuncs.functions.tasks import Task
from aifuncs.governance import Principal
from aifuncs.providers import InputColumn
from aifuncs.runtime import CallSpec, Failure, Meter, RequestContext, default_runtime
from aifuncs.session._session import Session

DEFAULT_RESULT_TYPE = "VARCHAR"
MAX_FALLBACK_DEPTH = 4  # endpoints a request may fall back through (cycles are refused when configured)
_log = logging.getLogger("aifuncs")


def bind_call(
    function: str,
    endpoint_name: str,
    request_type: pa.DataType | None,
    *,
    return_type: str | None = None,
    fail_on_error: bool = True,
    model_parameters: dict[str, Any] | None = None,
    response_format: str | None = None,
    cache: bool | None = None,
    task: Task | None = None,
    session: Session | None = None,
    principal: Principal | None = None,
    meters: tuple[Meter, ...] | None = None,
    wait_for_limits: bool | None = None,
    context: RequestContext | None = None,
    _depth: int = 0,
) -> CallSpec:
    """Everything about a call site that does not change per row, checked before any model call: first of
    all that the session's principal may query the endpoint.

    `session` gives the runtime, the catalog as its principal sees it, the meters, usage labels, waiting
    and checkpoint; without one, this process's runtime and identity (a public edge). `principal`, `meters`,
    `wait_for_limits` and `context` override the session's."""
    if session is None:
        runtime, base = default_runtime(), default_catalog()
        catalog = base if principal is None else base.acting_as(principal)
        checkpoint = None
        meters, wait_for_limits = meters or (), True if wait_for_limits is None else wait_for_limits
    else:
        runtime, checkpoint = session.runtime, session.checkpoint
        catalog = session.catalog if principal is None else session.base_catalog.acting_as(principal)
        meters = session.meters if meters is None else meters
        wait_for_limits = session.wait_for_limits if wait_for_limits is None else wait_for_limits
        context = context or session.context
    endpoint = catalog.authorize(
        endpoint_name, "query"
    )  # UnknownEndpoint (with suggestions), PermissionDenied
    provider = runtime.provider(endpoint)
    if request_type is not None:
        check_request(endpoint.name, request_type, provider.input_columns())
    declared = return_type or provider.output_type()
    result_type = to_duckdb_type(declared) if declared else DEFAULT_RESULT_TYPE
    gateway = catalog.gateway_settings(endpoint)  # limits, inference table, guardrails: one read
    guardrails = gateway.guardrails
    topic_call = None
    if guardrails is not None and guardrails.input.valid_topics:
        embedder = catalog.for_guardrail(guardrails.input.topic_endpoint)
        embedding_type = runtime.provider(embedder).output_type() or ""
        if not embedding_type.endswith("[]"):
            raise ConfigError(
                f"The valid_topics guardrail of {endpoint.name!r} needs an embedding endpoint; {embedder.name!r}"
                f" answers {embedding_type or 'text'}. Set topic_endpoint to an embedding model."
            )
        # admitted under the topic endpoint's own limits, after the guarded endpoint's would admit the request
        topic_call = CallSpec("ai_embed", embedder, to_duckdb_type(embedding_type), principal=catalog.principal,
                              context=context or RequestContext(), wait_for_limits=wait_for_limits,
                              rate_checks=catalog.gateway_settings(embedder).rate_checks,
                              precheck=gateway.rate_checks, checkpoint=checkpoint)  # fmt: skip
    fallback_call = None
    if gateway.fallback.endpoint is not None and _depth < MAX_FALLBACK_DEPTH:
        try:  # the fallback endpoint, for this same caller: its own grants, limits and guardrails hold
            fallback_call = bind_call(function, gateway.fallback.endpoint, request_type, return_type=result_type,
                                      fail_on_error=False, model_parameters=model_parameters,
                                      response_format=response_format, cache=cache, task=task, session=session,
                                      principal=catalog.principal, meters=meters, wait_for_limits=wait_for_limits,
                                      context=context, _depth=_depth + 1)  # fmt: skip
        except AifuncsError as error:  # e.g. the caller may not query it: this caller has no fallback there
            _log.info(
                "%s: no fallback to %r for this caller: %s", endpoint.name, gateway.fallback.endpoint, error
            )
        if fallback_call is not None and not gateway.fallback.follows(fallback_call.endpoint):
            # deleted and made again since it was named (perhaps by someone else): not the author's choice
            _log.warning("%s: the fallback %r is not the endpoint named (made again since); name it again",
                         endpoint.name, gateway.fallback.endpoint)  # fmt: skip
            fallback_call = None
    return CallSpec(
        function=function,
        endpoint=endpoint,
        result_type=result_type,
        failure=Failure.NULL if task is not None else Failure.RAISE if fail_on_error else Failure.RECORD,
        model_parameters=tuple(sorted((model_parameters or {}).items())),
        response_format=response_format,
        bulk_rows=provider.bulk_rows,
        cache=cache,
        meters=meters,
        task=task,
        principal=catalog.principal,
        rate_checks=gateway.rate_checks,
        wait_for_limits=wait_for_limits,
        context=context or RequestContext(),
        payloads=gateway.payloads,
        guardrails=guardrails,
        topic_call=topic_call,
        checkpoint=checkpoint,
        fallback=gateway.fallback.enabled,
        fallback_call=fallback_call,
    )


# A session's fields a binding does not depend on: each caller's own, put on a kept binding by its user.
_PER_CALLER = frozenset({"budgets", "progress", "context"})


_NAMES: dict[type, tuple[str, ...]] = {}


def _names(value: Any) -> tuple[str, ...]:
    """A dataclass's field names but the per-caller ones (read once per class: `bind_key` runs per request)."""
    kind = type(value)
    found = _NAMES.get(kind)
    if found is None:
        found = _NAMES[kind] = tuple(f.name for f in dataclasses.fields(kind) if f.name not in _PER_CALLER)
    return found


def bind_key(
    session: Session,
    function: str,
    endpoint_name: str,
    request_type: pa.DataType | None,
    revision: int,
    **options: Any,
) -> str:
    """What `bind_call(function, endpoint_name, request_type, session=session, **options)` answers, as one
    text, for a cache of bindings to be keyed by: every argument, every field of the session but its meters and
    labels (the principal with all its fields, since one made again under a deleted one's name is another; the
    runtime, catalog and checkpoint by object), and the catalog's `revision()`, which every governance change
    bumps: the rule every cache of a binding keys on (as `CallSpec.key()` names a bound call). A field added to
    the session or to the principal is part of it without another list to keep."""
    fields: list[Any] = []
    for name in _names(session):
        value = getattr(session, name)
        if name == "identity":
            principal = value.principal
            value = [*(getattr(principal, n) for n in _names(principal)), str(value.home)]
        elif not isinstance(value, bool | int | str | type(None)):
            value = id(value)
        fields.append(value)
    request = None if request_type is None else str(request_type)
    given = [fields, function, endpoint_name, request, options, revision]
    return json.dumps(given, sort_keys=True, default=str)


def _describe_columns(columns: list[InputColumn]) -> str:
    return ", ".join(f"{c.name} {c.type}" + ("" if c.required else " (optional)") for c in columns)


def check_request(endpoint: str, request_type: pa.DataType, columns: list[InputColumn] | None) -> None:
    """A STRUCT request maps its fields to the model's input columns by name, as in Databricks."""
    if not columns or pa.types.is_null(request_type):
        return
    expected = _describe_columns(columns)
    if not pa.types.is_struct(request_type):
        if len([c for c in columns if c.required]) <= 1:
            return
        raise RequestMismatch(
            f"Endpoint {endpoint!r} expects a STRUCT with fields ({expected}); the request is a single"
            f" {request_type} value. Build it with struct_pack(name := value, ...)."
        )
    given = [f.name for f in request_type]
    names = {c.name for c in columns}
    missing = [c.name for c in columns if c.required and c.name not in given]
    unknown = [g for g in given if g not in names]
    if missing or unknown:
        problems = "; ".join(
            part
            for part in (
                f"missing {', '.join(missing)}" if missing else "",
                f"not inputs of the model: {', '.join(unknown)}" if unknown else "",
            )
            if part
        )
        raise RequestMismatch(
            f"Endpoint {endpoint!r} expects fields ({expected}); the request has ({', '.join(given)}):"
            f" {problems}."
        )
