"""`http` endpoints: connections for `http_request`, one HTTP request per row.

A connection is a base URL, a key read from the environment (never stored), and what SQL may ask of it:
the methods and the path prefixes allowed. Every status a server answers is data (`status_code`, `text`);
only a request that gets no answer (refused, dropped, timed out) is an error, retried like any remote call.
"""

from __future__ import annotations

import asyncio
import re
import unicodedata
from typing import Any
from urllib.parse import quote, unquote

import httpx
import pyarrow as pa
from pydantic import Field

from aifuncs.errors import ArgumentError, EndpointUnreachable
from aifuncs.providers._http import HttpOptions, HttpProvider, join_url
from aifuncs.providers.base import CallOptions

RESULT_TYPE = "STRUCT(status_code INTEGER, text VARCHAR)"
_BODY_HEADERS = {"content-type": "application/json"}
_PATH_SAFE = "/!$&'()*+,;=:@-._~"  # RFC 3986 pchar: everything else is percent-encoded once
_ESCAPE = re.compile(r"%[0-9A-Fa-f]{2}")
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
# Headers that say where a request goes, who sends it, how its body is framed or which method or URL it
# really is: the connection sets them (or nobody does), never a row.
_RESERVED = {
    "host", "authorization", "content-length", "transfer-encoding", "connection", "keep-alive", "te", "trailer",
    "upgrade", "expect", "forwarded", "x-real-ip", "x-http-method-override", "x-http-method", "x-method-override",
    "x-original-url", "x-rewrite-url",
}  # fmt: skip
_RESERVED_PREFIXES = ("proxy-", "x-forwarded-")


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
        raw_path, mark, query = path.partition("?")
        try:
            normal = normal_path(raw_path)
        except ValueError as error:
            raise ArgumentError(
                f"Connection {name!r}: the path {path!r} must start with '/' and stay under it ({error})."
            ) from None
        if not any(_under(normal, prefix) for prefix in self.options.allowed_paths):
            under = ", ".join(self.options.allowed_paths)
            if normal != raw_path:
                raise ArgumentError(
                    f"Connection {name!r}: the path {path!r} must start with '/' and stay under it: decoded and"
                    f" resolved it is {normal!r}, outside {under}."
                )
            raise ArgumentError(f"Connection {name!r} allows paths under {under}, not {path!r}.")
        headers = _as_map(row.get("headers"))
        for header, value in headers.items():
            if problem := self._header_problem(header, value):
                raise ArgumentError(f"Connection {name!r}: the header {header!r} {problem}.")
        # What is sent is the path that was checked, encoded once: no server can read it as another one.
        sent = quote(normal, safe=_PATH_SAFE) + mark + query
        return method, sent, headers, _as_map(row.get("params")), row.get("json")

    def _header_problem(self, header: str, value: str) -> str | None:
        lowered = header.lower()
        if not _TOKEN.fullmatch(header):
            return "is not a valid header name (letters, digits and !#$%&'*+-.^_`|~ only)"
        if (
            lowered in _RESERVED
            or lowered.startswith(_RESERVED_PREFIXES)
            or lowered == self.options.auth_header.lower()
        ):
            return (
                "is the connection's to set, not a request's (Host, Authorization and the key's header,"
                " Content-Length, Transfer-Encoding, Connection, Proxy-*, Forwarded, X-Forwarded-* and method or"
                " URL overrides): remove it from headers"
            )
        if lowered in (h.lower() for h in self.options.headers):
            return (
                "is set by the connection itself (its headers option): remove it from the request's headers"
            )
        if _CONTROL.search(value):
            return "has a control character (a line break, NUL...) in its value: remove it"
        return None

    async def _send(
        self, method: str, path: str, headers: dict[str, str], params: dict[str, str], body: str | None
    ) -> dict[str, Any]:
        key = self.api_key()
        sent = {**self.options.headers, **headers, **(self.auth_headers(key) if key else {})}
        if body is not None and not any(h.lower() == "content-type" for h in sent):
            sent = {**_BODY_HEADERS, **sent}
        url = join_url(self.options.base_url, path)
        try:
            await self.through_proxy(httpx.URL(url))
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


def normal_path(path: str) -> str:
    """`path` decoded once and its dot segments resolved; ValueError (saying why) where servers could read it
    as another path: a dot segment hidden by encoding, a second encoding, a backslash, a `;` on a dot segment,
    a control character or a look-alike of `.` `/` `\\`, or a climb above the root."""
    if not path.startswith("/"):
        raise ValueError("it does not start with '/'")
    try:
        decoded = unquote(path, errors="strict")
    except UnicodeDecodeError:
        raise ValueError("it is not UTF-8 once decoded") from None
    if _ESCAPE.search(decoded):
        raise ValueError("it is still percent-encoded once decoded: encode it once")
    if "\\" in decoded:
        raise ValueError("it holds a backslash")
    if "://" in decoded:
        raise ValueError("it holds a URL")
    if any(unicodedata.category(c) == "Cc" for c in decoded):
        raise ValueError("it holds a control character")
    if not decoded.isascii() and any(
        c in unicodedata.normalize("NFKC", ch) for ch in decoded if not ch.isascii() for c in "./\\"
    ):
        raise ValueError("it holds a look-alike of '.', '/' or '\\'")
    parts: list[str] = []
    segments = decoded.split("/")[1:]
    for segment in segments:
        if segment in ("", "."):
            continue
        if segment == "..":
            if not parts:
                raise ValueError("it climbs above the root")
            parts.pop()
        elif not segment.split(";", 1)[0].strip(". "):
            raise ValueError(f"its segment {segment!r} is a dot segment in disguise")
        else:
            parts.append(segment)
    trailing = segments[-1] in ("", ".", "..") and bool(parts)
    return "/" + "/".join(parts) + ("/" if trailing else "")


def _under(path: str, prefix: str) -> bool:
    prefix = "/" + prefix.strip("/")
    return prefix == "/" or path == prefix or path.startswith(prefix + "/")


def _as_map(value: Any) -> dict[str, str]:
    """A SQL MAP as pyarrow gives it (a list of key-value pairs), or a struct's dict."""
    if value is None:
        return {}
    pairs = value.items() if isinstance(value, dict) else value
    return {str(k): str(v) for k, v in pairs if v is not None}
