"""Errors as every client reads them: Databricks' `{"error_code", "message"}` and OpenAI's `{"error": {...}}` in
one body, with the status that tells a client whether to retry (a failing model is 400: clients retry 500s)."""

from __future__ import annotations

import math

from starlette.responses import JSONResponse

from aifuncs.errors import (
    AifuncsError,
    EndpointExists,
    InvalidEndpointName,
    PermissionDenied,
    RateLimited,
    UnknownEndpoint,
)
from aifuncs.governance import InvalidToken

__all__ = ["ApiError", "error_response", "from_aifuncs"]


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
    if isinstance(error, EndpointExists):
        return ApiError(409, "RESOURCE_ALREADY_EXISTS", str(error))
    if isinstance(error, InvalidEndpointName):
        return ApiError(400, "INVALID_PARAMETER_VALUE", str(error))
    return ApiError(400, "BAD_REQUEST", str(error), {"x-should-retry": "false"})
