"""Whether a call's answers may be reused, and by whom: the reuse policy, read from the call and its provider."""

from __future__ import annotations

import os

import pyarrow as pa

from aifuncs._types import plain_type
from aifuncs.providers import Provider
from aifuncs.providers.base import CallOptions
from aifuncs.runtime._call import CallSpec
from aifuncs.runtime._distinct import call_identity


def deterministic(call: CallSpec, provider: Provider) -> bool:
    return provider.deterministic(CallOptions(call.parameters, call.response_format, call.result_type))


def reuse(call: CallSpec, provider: Provider) -> str | None:
    """How answers of this call may be reused: "store" (kept under AIFUNCS_HOME, shared by later queries),
    "query" (duplicates within this process's batches only), "checkpoint" (kept for a rerun of the running
    job only), or None (every row is asked: a model that samples must give each row its own answer)."""
    wanted = call.cache if call.cache is not None else provider.options.cache
    if wanted is False:
        return None
    checkpoint = "checkpoint" if call.checkpoint is not None else None
    if wanted is None:
        same = deterministic(call, provider)
        if not same or not provider.reuse_pays:
            # A job keeps what a rerun would pay for again; a cheap deterministic model rescoring is not.
            return checkpoint if not same else None
    if os.environ.get("AIFUNCS_CACHE", "").lower() in ("0", "off", "false", "no"):
        return checkpoint or "query"
    return "store"


def shares_answers(call: CallSpec, provider: Provider) -> bool:
    """Whether rows with the same request may share one answer within a query: the model gives the same
    request the same answer (a tabular model, temperature 0) or the call says `cache => true`, and neither
    the call nor the endpoint says `cache => false` (every row asked afresh)."""
    wanted = call.cache if call.cache is not None else provider.options.cache
    return wanted is True or (wanted is None and deterministic(call, provider))


def answer_identity(call: CallSpec, provider: Provider, request_type: pa.DataType) -> bytes:
    """What names a call's kept answers: everything that could change an answer, and whose they are."""
    endpoint = call.endpoint
    return call_identity(
        call.function,
        endpoint.name,
        endpoint.version,
        endpoint.kind,
        endpoint.options,
        provider.model_version(),
        call.result_type,
        call.model_parameters,
        call.response_format,
        call.task.identity() if call.task else None,
        str(plain_type(request_type)),  # DuckDB may hand VARCHAR over as string or string_view
        *_answer_owner(call, provider),
    )


def _answer_owner(call: CallSpec, provider: Provider) -> tuple[str, ...]:
    """Whose kept answers a call may use: a token principal's own (one principal's answers, served to
    another, would tell what it asked, by content or by timing), unless the endpoint shares them. The
    home's owner keeps the answers it always had; every hit was authorized (CAN_QUERY) at plan time."""
    principal = call.principal
    if principal is None or principal.implicit or provider.options.share_answers:
        return ()
    if principal.created_at is None:
        return (f"principal:{principal.name}",)
    # a principal made again under a deleted one's name is someone else: it is served none of its answers
    return (f"principal:{principal.name}", principal.created_at.isoformat())
