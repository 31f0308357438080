"""Errors as every client reads them: Databricks' `{"error_code", "message"}` and OpenAI's `{"error": {...}}` in
one body, with the status that tells a client whether to retry.

A model that rejects its input is a 400 with `x-should-retry: false` (clients retry 500s for minutes). A failure
that may pass is a status every client retries, with a whole-second `Retry-After` (databricks-sdk, and mlflow's
deployments client through it, retry only 429 and 503 and read Retry-After as an integer; openai-python retries
both): an upstream that still failed after aifuncs' own retries (5xx, timeouts, dropped connections, garbled
replies) is 503, one that said 429 is 429 with its Retry-After, and a store of ours that is locked or failing is
503 too. An upstream that refuses the server itself (its key, its address) is 502 without a retry hint: an
operator fixes the endpoint."""

from __future__ import annotations

import math
import sqlite3

from starlette.responses import JSONResponse

from aifuncs.errors import (
    AifuncsError,
    EndpointExists,
    InvalidEndpointName,
    LimiterUnavailable,
    PermissionDenied,
    RateLimited,
    RemoteError,
    UnknownEndpoint,
)
from aifuncs.governance import InvalidToken
from aifuncs.storage import database_failing

__all__ = ["ApiError", "error_response", "from_aifuncs", "from_unexpected"]

_RETRY_AFTER_S = 1  # when nobody said how long: databricks-sdk's own default
_INPUT_REJECTED = {400, 404, 413, 415, 422}  # the upstream read the request and refused what it asks


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers or {}


def error_response(error: ApiError) -> JSONResponse:
    kind = "invalid_request_error" if error.status < 500 else "server_error"
    body = {
        "error_code": error.code,
        "message": error.message,
        "error": {"message": error.message, "type": kind, "code": error.code},
    }
    return JSONResponse(body, status_code=error.status, headers=error.headers)


def unauthenticated(message: str, invalid: bool = True) -> ApiError:
    challenge = 'Bearer error="invalid_token"' if invalid else "Bearer"
    return ApiError(401, "UNAUTHENTICATED", message, {"WWW-Authenticate": challenge})


def from_aifuncs(error: AifuncsError) -> ApiError:
    """The status and code of an aifuncs error; anything a caller's request caused is a 4xx."""
    if isinstance(error, InvalidToken):
        return unauthenticated(str(error))
    if isinstance(error, UnknownEndpoint):
        return ApiError(404, "RESOURCE_DOES_NOT_EXIST", str(error))
    if isinstance(error, PermissionDenied):
        return ApiError(403, "PERMISSION_DENIED", str(error))
    if isinstance(error, RateLimited):
        wait = max(1, math.ceil(error.wait_s))  # clients take whole seconds; never less than the real wait
        return ApiError(429, "REQUEST_LIMIT_EXCEEDED", str(error), {"Retry-After": str(wait)})
    if isinstance(error, LimiterUnavailable):  # fails closed, and says when to come back
        wait = max(1, math.ceil(error.wait_s))
        return ApiError(503, "TEMPORARILY_UNAVAILABLE", str(error), {"Retry-After": str(wait)})
    if isinstance(error, EndpointExists):
        return ApiError(409, "RESOURCE_ALREADY_EXISTS", str(error))
    if isinstance(error, InvalidEndpointName):
        return ApiError(400, "INVALID_PARAMETER_VALUE", str(error))
    transient = _transient(error)
    if transient is not None:
        return transient
    return ApiError(400, "BAD_REQUEST", str(error), {"x-should-retry": "false"})


def from_unexpected(error: BaseException) -> ApiError | None:
    """The answer to an error that is no aifuncs error, when it is a store's passing failure (503); else None
    (a bug: the caller logs it and answers 500)."""
    return _transient(error)


def _transient(error: BaseException) -> ApiError | None:
    """503 or 429 (with Retry-After) for a failure a client's retry may get past, 502 for an upstream that
    refuses the server itself; None when the request itself is at fault (or nothing upstream or stored failed)."""
    for cause in _causes(error):
        if isinstance(cause, RemoteError):
            return _upstream(cause, str(error))
        if isinstance(cause, LimiterUnavailable):  # inside a model error: still fails closed, says when
            return ApiError(503, "TEMPORARILY_UNAVAILABLE", str(error), _retry_after(cause.wait_s))
        if isinstance(cause, sqlite3.Error) or database_failing(cause):
            # A store of ours (usage, limits, inference table, answers) locked or failing: nothing the
            # request did; the same request shortly after succeeds.
            return ApiError(
                503,
                "TEMPORARILY_UNAVAILABLE",
                "The server could not reach one of its stores just now; retry shortly.",
                _retry_after(None),
            )
    return None


def _upstream(cause: RemoteError, message: str) -> ApiError | None:
    if cause.status == 429:
        return ApiError(429, "REQUEST_LIMIT_EXCEEDED", message, _retry_after(cause.retry_after))
    if cause.retryable:
        return ApiError(503, "TEMPORARILY_UNAVAILABLE", message, _retry_after(cause.retry_after))
    if cause.status is not None and cause.status not in _INPUT_REJECTED:  # 401, 403...: the server's key
        return ApiError(502, "BAD_GATEWAY", message, {"x-should-retry": "false"})
    return None  # the model rejected the input: the caller's 400


def _retry_after(seconds: float | None) -> dict[str, str]:
    wait = _RETRY_AFTER_S if seconds is None else max(1, math.ceil(seconds))
    return {"Retry-After": str(wait), "x-should-retry": "true"}


def _causes(error: BaseException) -> list[BaseException]:
    """The error and what it was raised from (a model error wraps the upstream's reply); not what was merely
    being handled when it was raised, which says nothing of this failure."""
    found: list[BaseException] = []
    current: BaseException | None = error
    while current is not None and current not in found:
        found.append(current)
        current = current.__cause__
    return found
