"""A lean HTTP/1.1 transport for httpx: asyncio streams plus h11, a plain pool of idle connections.

Why: httpx's default transport (httpcore) spent 3.2-3.5 ms of CPU per request here with 32 requests in
flight (its pool re-examines every queued request on each change, encode/httpx#3215); at 640 requests a
second that is more than a core. This one spends about 0.6 ms, so the runtime reaches the server's own
limit. It keeps httpx's API and error types: timeouts raise `httpx.TimeoutException`s, network failures
`httpx.TransportError`s. httpx mounts no proxy of the environment on a client given its own transport, so
requests go straight to their host.

A request may name the addresses to connect to (`CONNECT_TO`, set by the egress check with the addresses it
vetted): the connection then goes to one of them, the name kept for the Host header and TLS (SNI and the
certificate's check), and the name is not resolved again. Connections are pooled per origin and address.

Scope: what inference APIs need. Whole request and reply bodies in memory (no streaming), HTTP/1.1,
TLS with httpx's default context. How many requests run at once is the runtime's business, not the pool's.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import defaultdict, deque
from typing import Any

import h11
import httpx

_READ_SIZE = 1 << 16
_MAX_IDLE_PER_ORIGIN = 64
CONNECT_TO = "aifuncs.connect_to"  # request extension: the addresses (text) vetted for the request's host


class _Connection:
    __slots__ = ("reader", "writer", "state")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.state = h11.Connection(h11.CLIENT)

    def reusable(self) -> bool:
        return self.state.our_state is h11.IDLE and not self.reader.at_eof() and not self.writer.is_closing()

    def close(self) -> None:
        self.writer.close()


class _StaleConnection(Exception):
    """A pooled connection the server had closed: nothing was answered, so the request may be sent again."""


Origin = tuple[str, str, int]
PoolKey = tuple[Origin, tuple[str, ...]]  # an origin and the addresses its connections may go to


class LeanTransport(httpx.AsyncBaseTransport):
    def __init__(self, *, verify: ssl.SSLContext | None = None) -> None:
        self._idle: defaultdict[PoolKey, deque[_Connection]] = defaultdict(deque)
        self._ssl = verify
        self._closed = False

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if self._closed:
            raise RuntimeError("The transport has been closed.")
        body = await request.aread()
        timeouts: dict[str, float | None] = request.extensions.get("timeout", {})
        origin = _origin(request.url)
        pinned = tuple(str(a) for a in request.extensions.get(CONNECT_TO, ()))
        key = (origin, pinned)
        connection = self._take_idle(key)
        if connection is not None:
            try:
                return await self._exchange(connection, key, request, body, timeouts, reused=True)
            except _StaleConnection:
                pass  # the server had hung up on the idle connection: try once on a new one
        connection = await self._connect(origin, pinned, timeouts.get("connect"))
        try:
            return await self._exchange(connection, key, request, body, timeouts, reused=False)
        except _StaleConnection as error:  # a new connection closed before a reply: the server dropped it
            raise httpx.RemoteProtocolError(str(error), request=request) from None

    async def aclose(self) -> None:
        self._closed = True
        for pool in self._idle.values():
            while pool:
                pool.pop().close()

    def _take_idle(self, key: PoolKey) -> _Connection | None:
        pool = self._idle.get(key)
        while pool:
            connection = pool.pop()
            if connection.reusable():
                return connection
            connection.close()
        return None

    def _give_back(self, key: PoolKey, connection: _Connection) -> None:
        pool = self._idle[key]
        if self._closed or len(pool) >= _MAX_IDLE_PER_ORIGIN:
            connection.close()
        else:
            pool.append(connection)

    async def _connect(self, origin: Origin, pinned: tuple[str, ...], timeout: float | None) -> _Connection:
        scheme, host, port = origin
        context = None
        if scheme == "https":
            if self._ssl is None:
                self._ssl = httpx.create_ssl_context()
            context = self._ssl
        # The vetted addresses in order, else the name (resolved by asyncio); TLS checks the name either way.
        targets = pinned or (host,)
        tls_name = host if context is not None and pinned else None
        failure: OSError | None = None
        try:
            async with asyncio.timeout(timeout):
                for target in targets:
                    try:
                        reader, writer = await asyncio.open_connection(
                            target, port, ssl=context, server_hostname=tls_name, limit=_READ_SIZE
                        )
                    except OSError as error:
                        failure = error
                        continue
                    return _Connection(reader, writer)
        except TimeoutError:
            raise httpx.ConnectTimeout(f"Connecting to {host}:{port} timed out") from None
        raise httpx.ConnectError(f"Could not connect to {host}:{port}: {failure}")

    async def _exchange(
        self,
        connection: _Connection,
        key: PoolKey,
        request: httpx.Request,
        body: bytes,
        timeouts: dict[str, float | None],
        *,
        reused: bool,
    ) -> httpx.Response:
        done = False
        try:
            await self._send(connection, request, body, timeouts.get("write"))
            response, content = await self._receive(connection, request, timeouts.get("read"), reused)
            done = True
        finally:
            if not done:  # failed or cancelled part-way: the connection's state is unknown
                connection.close()
        if connection.state.our_state is h11.DONE and connection.state.their_state is h11.DONE:
            connection.state.start_next_cycle()
            self._give_back(key, connection)
        else:  # "Connection: close", or HTTP/1.0
            connection.close()
        return httpx.Response(
            response.status_code,
            headers=[(bytes(k), bytes(v)) for k, v in response.headers],
            content=content,
            request=request,
            extensions={"http_version": b"HTTP/" + response.http_version, "reason_phrase": response.reason},
        )

    async def _send(
        self, connection: _Connection, request: httpx.Request, body: bytes, timeout: float | None
    ) -> None:
        headers = list(request.headers.raw)
        if not any(name.lower() == b"host" for name, _ in headers):
            headers.insert(0, (b"Host", request.url.netloc))
        state = connection.state
        try:
            data = state.send(
                h11.Request(method=request.method, target=request.url.raw_path, headers=headers)
            )
            if body:
                data = (data or b"") + (state.send(h11.Data(data=body)) or b"")
            data = (data or b"") + (state.send(h11.EndOfMessage()) or b"")
        except h11.LocalProtocolError as error:
            raise httpx.LocalProtocolError(str(error), request=request) from None
        try:
            async with asyncio.timeout(timeout):
                connection.writer.write(data)
                await connection.writer.drain()
        except TimeoutError:
            raise httpx.WriteTimeout("Sending the request timed out", request=request) from None
        except OSError as error:
            raise httpx.WriteError(str(error), request=request) from None

    async def _receive(
        self, connection: _Connection, request: httpx.Request, timeout: float | None, reused: bool
    ) -> tuple[h11.Response, bytes]:
        state = connection.state
        response: h11.Response | None = None
        chunks: list[bytes] = []
        received_any = False
        try:
            async with asyncio.timeout(timeout):
                while True:
                    event: Any = state.next_event()
                    if event is h11.NEED_DATA:
                        data = await connection.reader.read(_READ_SIZE)
                        if data:
                            received_any = True
                        elif not received_any:
                            raise _StaleConnection("The server closed the connection without replying.")
                        state.receive_data(data)
                    elif isinstance(event, h11.Response):
                        response = event
                    elif isinstance(event, h11.Data):
                        chunks.append(bytes(event.data))
                    elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                        break
                    # h11.InformationalResponse (100 Continue): keep reading
        except TimeoutError:
            raise httpx.ReadTimeout("Waiting for the reply timed out", request=request) from None
        except ConnectionError as error:
            if reused and not received_any:
                raise _StaleConnection(str(error)) from None
            raise httpx.ReadError(str(error), request=request) from None
        except OSError as error:
            raise httpx.ReadError(str(error), request=request) from None
        except h11.RemoteProtocolError as error:
            raise httpx.RemoteProtocolError(str(error), request=request) from None
        if response is None:
            raise httpx.RemoteProtocolError("The server closed the connection mid-reply.", request=request)
        return response, b"".join(chunks)


def _origin(url: httpx.URL) -> Origin:
    port = url.port or (443 if url.scheme == "https" else 80)
    return url.scheme, url.host, port
