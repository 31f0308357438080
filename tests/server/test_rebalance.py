"""Kept connections end after a number of requests or seconds (`Connection: close`), so that clients spread
again over the workers after one restarts: a real `aifuncs serve`, a real keep-alive client, a raw socket."""

from __future__ import annotations

import asyncio
import os
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from servers import free_port, running

from aifuncs.errors import ConfigError
from aifuncs.server._rebalance import MAX_AGE_S, MAX_REQUESTS, Rebalance, _settings

TESTS = Path(__file__).resolve().parents[1]


def serve(tmp_path: Path, requests: int, seconds: float) -> Any:
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(TESTS), "AIFUNCS_SERVE_CONNECTION_REQUESTS": str(requests),
           "AIFUNCS_SERVE_CONNECTION_S": str(seconds)}  # fmt: skip
    command = [sys.executable, "-m", "aifuncs.cli", "serve", "--port", str(port)]
    return port, running(command, f"http://127.0.0.1:{port}/health", tmp_path / "serve.log", env)


@pytest.fixture
def every_third(home: Path, tmp_path: Path) -> Iterator[int]:
    port, server = serve(tmp_path, 3, 600)
    with server:
        yield port


def test_a_connection_is_closed_after_its_share_of_requests(every_third: int) -> None:
    with httpx.Client(base_url=f"http://127.0.0.1:{every_third}", timeout=60) as client:
        said = [client.get("/health").headers.get("connection") for _ in range(7)]
    assert said == [None, None, "close", None, None, "close", None]  # then the client opened a new one
    with socket.create_connection(("127.0.0.1", every_third), timeout=60) as raw:  # and the server does close
        reader = raw.makefile("rb")
        for number in range(1, 4):
            raw.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            head = _response_head(reader)
            assert (b"connection: close" in head.lower()) == (number == 3)
        assert reader.read() == b""  # end of stream: the kept connection ended after the third answer


def test_a_connection_is_closed_once_it_is_old(home: Path, tmp_path: Path) -> None:
    port, server = serve(tmp_path, 1000, 1.0)
    with server, httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
        opened = time.monotonic()
        assert client.get("/health").headers.get("connection") is None
        while time.monotonic() - opened < 1.0:  # the connection's age passes its second
            time.sleep(0.05)
        assert client.get("/health").headers.get("connection") == "close"
        assert client.get("/health").headers.get("connection") is None  # a new connection, young again


def test_stale_entries_are_pruned_and_settings_are_checked() -> None:
    now = [0.0]

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send(
            {"type": "http.response.start", "status": 200, "headers": [(b"connection", b"keep-alive")]}
        )
        await send({"type": "http.response.body", "body": b""})

    rebalance = Rebalance(app, max_requests=10, max_age_s=5.0, clock=lambda: now[0])

    def ask(port: int) -> list[tuple[bytes, bytes]]:
        sent: list[Any] = []

        async def send(message: Any) -> None:
            sent.append(message)

        scope = {"type": "http", "client": ("127.0.0.1", port), "server": ("127.0.0.1", 8080)}
        asyncio.run(rebalance(scope, None, send))  # type: ignore[arg-type]
        return list(sent[0]["headers"])

    for port in range(1000, 1100):  # a hundred connections that each closed after one request
        assert ask(port) == [(b"connection", b"keep-alive")]
    now[0] = 6.0
    assert ask(2000) == [(b"connection", b"keep-alive")]
    assert len(rebalance._seen) == 1  # the closed ones' entries went with their age
    assert ask(1000) == [(b"connection", b"keep-alive")]  # a new connection on an old port starts afresh
    now[0] = 11.5
    assert ask(2000) == [(b"connection", b"close")]  # its age passed: this answer is its last
    assert _settings({}) == (MAX_REQUESTS, MAX_AGE_S)
    with pytest.raises(ConfigError, match="AIFUNCS_SERVE_CONNECTION_REQUESTS is a whole number"):
        _settings({"AIFUNCS_SERVE_CONNECTION_REQUESTS": "lots"})
    with pytest.raises(ConfigError, match="at least 1 request"):
        Rebalance(app, max_requests=0)


def _response_head(reader: Any) -> bytes:
    """One response's head; its body read and dropped, by Content-Length."""
    head = b""
    while not head.endswith(b"\r\n\r\n"):
        line = reader.readline()
        assert line, "the server closed before answering"
        head += line
    length = next(
        int(line.split(b":")[1]) for line in head.lower().split(b"\r\n") if line.startswith(b"content-length")
    )
    reader.read(length)
    return head
