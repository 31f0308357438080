"""`http` endpoints: connections for `http_request`, one HTTP request per row.

A connection is a base URL, a key read from the environment (never stored), and what SQL may ask of it:
the methods and the path prefixes allowed. Every status a server answers is data (`status_code`, `text`);
only a request that gets no answer (refused, dropped, timed out) is an error, retried like any remote call.
"""

from __future__ import annotations

import asyncio
import posixpath
from typing import Any

import httpx
import pyarrow as pa
from pydantic import Field

from aifuncs.errors import ArgumentError, EndpointUnreachable
from aifuncs.providers._http import HttpOptions, HttpProvider, join_url
from aifuncs.providers.base import CallOptions

RESULT_TYPE = "STRUCT(status_code INTEGER, text VARCHAR)"
_BODY_HEADERS = {"content-type": "application/json"}


class HttpConnectionOptions(HttpOptions):
    base_url: str = Field(description="Where every path starts, e.g. https://crm.example.com/api")
    allowed_methods: list[str] = Field(
        default_factory=lambda: ["GET"], description="Methods SQL may use (default: GET only)."
    )
    allowed_paths: list[str] = Field(
        default_factory=lambda: ["/"], description="Path prefixes SQL may ask for (default: any path)."
    )
    auth_header: str = Field(default="Authorization", description="The header that carries the key.")
    auth_scheme: str = Field(default="Bearer", description="Written before the key ('' for the key alone).")


class HttpConnectionProvider(HttpProvider):
    kind = "http"
    Options = HttpConnectionOptions
    options: HttpConnectionOptions
    default_batch_rows = 1  # a row is a request: each is admitted, counted and logged on its own

    def output_type(self) -> str | None:
        return RESULT_TYPE

    def deterministic(self, options: CallOptions) -> bool:
        return False  # an API's answer may change between calls: never reused

    def auth_headers(self, key: str) -> dict[str, str]:
        scheme = self.options.auth_scheme.strip()
        return {self.options.auth_header: f"{scheme} {key}" if scheme else key}

    async def predict(self, requests: pa.Array, options: CallOptions) -> Any:
        rows = [self._checked(row) for row in requests.to_pylist()]  # all checked before any is sent
        return await asyncio.gather(*(self._send(*row) for row in rows))

    def _checked(self, row: dict[str, Any]) -> tuple[str, str, dict[str, str], dict[str, str], str | None]:
        name = self.endpoint.name
        method = str(row.get("method") or "").upper()
        allowed = [m.upper() for m in self.options.allowed_methods]
        if method not in allowed:
            raise ArgumentError(
                f"Connection {name!r} allows {', '.join(allowed)} requests, not {method or 'an empty method'!r}."
                " Add it to the connection's allowed_methods to permit it."
            )
        path = str(row.get("path") or "")
        normal = posixpath.normpath(path.split("?", 1)[0]) if path else ""
        if not path.startswith("/") or "://" in path or ".." in path.split("?", 1)[0].split("/"):
            raise ArgumentError(
                f"Connection {name!r}: the path {path!r} must start with '/' and stay under it."
            )
        if not any(_under(normal, prefix) for prefix in self.options.allowed_paths):
            raise ArgumentError(
                f"Connection {name!r} allows paths under {', '.join(self.options.allowed_paths)}, not {path!r}."
            )
        return method, path, _as_map(row.get("headers")), _as_map(row.get("params")), row.get("json")

    async def _send(
        self, method: str, path: str, headers: dict[str, str], params: dict[str, str], body: str | None
    ) -> dict[str, Any]:
        key = self.api_key()
        sent = {**self.options.headers, **headers, **(self.auth_headers(key) if key else {})}
        if body is not None:
            sent = {**_BODY_HEADERS, **sent}
        url = join_url(self.options.base_url, path)
        try:
            response = await self.client().request(
                method,
                url,
                params=params or None,
                headers=sent,
                content=None if body is None else body.encode(),
            )
        except httpx.TimeoutException:
            raise EndpointUnreachable(
                f"Connection {self.endpoint.name!r}: no reply from {self.options.base_url} within"
                f" {self.options.timeout_s:g} s",
                retryable=True,
            ) from None
        except httpx.TransportError as error:
            raise EndpointUnreachable(
                f"Connection {self.endpoint.name!r}: connection to {self.options.base_url} failed"
                f" ({type(error).__name__})",
                retryable=True,
            ) from None
        text = response.text
        if key:
            text = text.replace(key, "***")  # a server that echoes the request must not hand SQL the key
        return {"status_code": response.status_code, "text": text}


def _under(path: str, prefix: str) -> bool:
    prefix = "/" + prefix.strip("/")
    return prefix == "/" or path == prefix or path.startswith(prefix + "/")


def _as_map(value: Any) -> dict[str, str]:
    """A SQL MAP as pyarrow gives it (a list of key-value pairs), or a struct's dict."""
    if value is None:
        return {}
    pairs = value.items() if isinstance(value, dict) else value
    return {str(k): str(v) for k, v in pairs if v is not None}
