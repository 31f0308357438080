"""Slow or idle clients never hold the server: 200 sockets that send half a header and stall neither keep a
normal request from its answer nor stay open past the client timeout; nor does a body sent in part, a
connection that sends nothing, or an endless head. With a connection cap below the stalled sockets, the
oldest stalled ones make way for real requests."""

from __future__ import annotations

import contextlib
import selectors
import socket
import time
from collections.abc import Iterator
from urllib.parse import urlsplit

import httpx

from security.conftest import Secured, Serve

TIMEOUT_S = 2.0


def _connect(url: str) -> socket.socket:
    parts = urlsplit(url)
    return socket.create_connection((parts.hostname, parts.port), timeout=10)


@contextlib.contextmanager
def _stalled(url: str, count: int, opening: bytes) -> Iterator[list[socket.socket]]:
    sockets = []
    try:
        for _ in range(count):
            sock = _connect(url)
            if opening:
                sock.sendall(opening)
            sockets.append(sock)
        yield sockets
    finally:
        for sock in sockets:
            sock.close()


def _closed_within(sockets: list[socket.socket], seconds: float) -> tuple[int, list[bytes]]:
    """How many of `sockets` the server closed within `seconds`, and what each said before closing."""
    selector = selectors.DefaultSelector()
    for sock in sockets:
        sock.setblocking(False)
        selector.register(sock, selectors.EVENT_READ, [])
    closed, said = 0, []
    deadline = time.monotonic() + seconds
    while closed < len(sockets) and time.monotonic() < deadline:
        for key, _ in selector.select(timeout=max(0.0, deadline - time.monotonic())):
            try:
                data = key.fileobj.recv(65536)  # type: ignore[union-attr]
            except ConnectionResetError:
                data = b""
            if data:
                key.data.append(data)
            else:
                selector.unregister(key.fileobj)
                said.append(b"".join(key.data))
                closed += 1
    selector.close()
    return closed, said


def _answered_s(url: str) -> float:
    started = time.monotonic()
    assert httpx.get(url + "/health", timeout=30).status_code == 200
    return time.monotonic() - started


def test_half_headers_do_not_hold_the_server(secured: Secured, serve: Serve) -> None:
    with serve(args=["--client-timeout", str(TIMEOUT_S)]) as url:
        started = time.monotonic()
        with _stalled(url, 200, b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: ") as sockets:
            assert _answered_s(url) < 1.5  # promptly, while 200 stalled sockets are open
            closed, said = _closed_within(sockets, TIMEOUT_S + 10)
            assert closed == 200, f"{200 - closed} stalled sockets still open"
            assert time.monotonic() - started < TIMEOUT_S + 10
            assert all(s.startswith(b"HTTP/1.1 408 ") for s in said)
        assert _answered_s(url) < 1.5


def test_idle_part_sent_and_endless_clients_are_closed(secured: Secured, serve: Serve) -> None:
    with serve(args=["--client-timeout", str(TIMEOUT_S)]) as url:
        body_head = (
            f"POST /serving-endpoints/llm/invocations HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer"
            f" {secured.tokens['alice']}\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n"
        ).encode()
        with _stalled(url, 5, b"") as idle, _stalled(url, 5, body_head + b'{"messages": [') as bodies:
            closed, _ = _closed_within(idle + bodies, TIMEOUT_S + 10)
            assert closed == 10
        with _stalled(url, 1, b"GET /health HTTP/1.1\r\nHost: x\r\n") as (endless,):
            with contextlib.suppress(ConnectionError):  # the server may close while this still sends
                for _ in range(100):
                    endless.sendall(b"X-Pad: " + b"a" * 1000 + b"\r\n")
            closed, said = _closed_within([endless], TIMEOUT_S + 10)
            assert closed == 1 and said[0].startswith(b"HTTP/1.1 431 ")
        assert secured.upstream.stats.requests == 0


def test_over_the_connection_cap_stalled_sockets_make_way(secured: Secured, serve: Serve) -> None:
    with serve(args=["--client-timeout", "60", "--max-connections", "50"]) as url:
        with _stalled(url, 200, b"GET /health HTTP/1.1\r\nHost: x\r\n") as sockets:
            assert _answered_s(url) < 1.5  # the cap sheds a stalled socket, never the real request
            closed, _ = _closed_within(sockets, 10)
            assert closed >= 150  # only the newest 49 or so stay: the cap held long before the timeout
