"""A streamed POST: the request on a connection of its own, the reply's server-sent events read as they come.

The lean transport (`_transport.py`) reads whole replies; a streamed answer is read event by event instead, on
a connection used for that one request: closing it (the caller stopped reading, a client went away) is what
tells the upstream to stop generating. A non-admin's endpoint connects only to the addresses the egress check
vetted, as every other request does; an error reply raises the same `RemoteError`s as `post_json`.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import h11
import httpx

from aifuncs.errors import EndpointUnreachable, RemoteError
from aifuncs.providers._http import HttpProvider, _json_value, _retry_after, _scrub, vet

_READ_SIZE = 1 << 16
_SHOWN_BODY = 300


async def post_events(
    provider: HttpProvider, url: str, payload: Any, headers: dict[str, str] | None = None
) -> AsyncIterator[dict[str, Any]]:
    """POST `payload` as JSON and yield each `data:` event of the reply as parsed JSON (`[DONE]` ends it)."""
    key = provider.api_key()
    sent = {**provider.options.headers, **(headers or {}), **(provider.auth_headers(key) if key else {})}
    name = provider.endpoint.name
    target = httpx.URL(url)
    timeout_s = provider.options.timeout_s
    provider.client()  # makes the endpoint's egress policy where its config is held to one
    addresses = await vet(provider.egress, target) if provider.egress is not None else []
    writer: asyncio.StreamWriter | None = None
    try:
        reader, writer = await _connect(target, addresses, timeout_s)
        connection = h11.Connection(h11.CLIENT)
        body = json.dumps(payload, default=_json_value, separators=(",", ":")).encode()
        head = [("Host", target.netloc.decode()), ("content-type", "application/json"),
                ("accept", "text/event-stream"), ("content-length", str(len(body))), *sent.items()]  # fmt: skip
        data = connection.send(h11.Request(method="POST", target=target.raw_path, headers=head)) or b""
        data += (connection.send(h11.Data(data=body)) or b"") + (connection.send(h11.EndOfMessage()) or b"")
        writer.write(data)
        await writer.drain()
        response: h11.Response | None = None
        error_body = b""
        pending = b""
        while True:
            event: Any = connection.next_event()
            if event is h11.NEED_DATA:
                async with asyncio.timeout(timeout_s):
                    connection.receive_data(await reader.read(_READ_SIZE))
            elif isinstance(event, h11.Response):
                response = event
            elif isinstance(event, h11.Data):
                assert response is not None
                if response.status_code >= 400:
                    error_body += bytes(event.data)
                    continue
                pending += bytes(event.data)
                *events, pending = pending.replace(b"\r\n", b"\n").split(b"\n\n")
                for raw in events:
                    parsed = _data(raw)
                    if parsed is _DONE:
                        return
                    if parsed is not None:
                        yield parsed
            elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                break
        if response is None:
            raise EndpointUnreachable(
                f"Endpoint {name!r}: {url} closed the connection without a reply.", retryable=True
            )
        if response.status_code >= 400:
            headers_got = {k.decode().lower(): v.decode() for k, v in response.headers}
            raise RemoteError(
                f"Endpoint {name!r}: {url} answered HTTP {response.status_code}:"
                f" {_scrub(error_body.decode(errors='replace')[:_SHOWN_BODY], key)}",
                status=response.status_code,
                retryable=response.status_code in {408, 409, 425, 429, 500, 502, 503, 504, 529},
                retry_after=_retry_after(headers_got.get("retry-after")),
            )
        if pending.strip() and (parsed := _data(pending)) not in (None, _DONE):
            yield parsed
    except TimeoutError:
        raise EndpointUnreachable(
            f"Endpoint {name!r}: no reply from {url} within {timeout_s:g} s", retryable=True
        ) from None
    except (OSError, h11.ProtocolError) as error:
        raise EndpointUnreachable(
            f"Endpoint {name!r}: connection to {url} failed ({type(error).__name__}: {error})", retryable=True
        ) from None
    finally:
        if writer is not None:
            writer.close()  # the upstream sees the connection go, and stops generating


_DONE: Any = object()


def _data(raw: bytes) -> Any:
    """One event's `data:` lines as parsed JSON; `_DONE` for `[DONE]`; None for an event without data."""
    lines = [line[5:].strip() for line in raw.split(b"\n") if line.startswith(b"data:")]
    if not lines:
        return None
    text = b"\n".join(lines)
    if text == b"[DONE]":
        return _DONE
    try:
        value = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise RemoteError(f"A streamed event is not JSON: {text[:80]!r}", retryable=False) from None
    return value if isinstance(value, dict) else None


async def _connect(
    url: httpx.URL, addresses: list[str], timeout_s: float
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    port = url.port or (443 if url.scheme == "https" else 80)
    context = httpx.create_ssl_context() if url.scheme == "https" else None
    failure: OSError | None = None
    async with asyncio.timeout(timeout_s):
        for target in addresses or [url.host]:
            try:
                return await asyncio.open_connection(
                    target, port, ssl=context, server_hostname=url.host if context else None, limit=_READ_SIZE
                )
            except OSError as error:
                failure = error
    raise OSError(f"could not connect to {url.host}:{port}: {failure}")
