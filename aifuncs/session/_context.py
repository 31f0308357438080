"""A request context from what a caller passed: the usage labels checked at the edge."""

from __future__ import annotations

from collections.abc import Mapping

from aifuncs.errors import ArgumentError
from aifuncs.runtime import FALLBACK_LABEL, RequestContext


def request_context(
    origin: str, usage_context: Mapping[str, str] | None = None, client_request_id: str | None = None
) -> RequestContext:
    """The usage log's account of where a query comes from, its labels checked."""
    if usage_context is not None and not isinstance(usage_context, Mapping):
        raise ArgumentError(
            f"usage_context is a map of names to texts, e.g. {{'team': 'growth'}}, not {usage_context!r}."
        )
    labels = dict(usage_context or {})
    wrong = [k for k, v in labels.items() if not isinstance(k, str) or not isinstance(v, str)]
    if wrong:
        raise ArgumentError(
            f"usage_context maps texts to texts; these keys do not: {wrong}. Convert the values with str()."
        )
    if FALLBACK_LABEL in labels:  # the runtime's own: which entity failed a request a fallback answered
        raise ArgumentError(
            f"usage_context may not set {FALLBACK_LABEL!r}: the server records it on requests a fallback"
            " answered. Name your label otherwise."
        )
    if client_request_id is not None and not isinstance(client_request_id, str):
        raise ArgumentError(f"client_request_id is a text, not {client_request_id!r}.")
    return RequestContext(origin, client_request_id, tuple(sorted(labels.items())))
