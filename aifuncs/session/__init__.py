"""Sessions: one caller's world (runtime, catalog as its principal sees it, identity, meters, usage labels,
checkpoint), and the binding of one AI call in it (`bind_call`: the endpoint resolved for the principal)."""

from __future__ import annotations

from aifuncs.session._bind import bind_call, bind_key, check_request
from aifuncs.session._context import request_context
from aifuncs.session._options import RequestOptions, SpendingLimits, merge
from aifuncs.session._session import Session, open_session

__all__ = [
    "RequestOptions",
    "Session",
    "SpendingLimits",
    "bind_call",
    "bind_key",
    "check_request",
    "merge",
    "open_session",
    "request_context",
]
