"""The lean HTTP transport against a scripted raw-socket server on 127.0.0.1: reuse, stale connections,
framing, timeouts and failures, each surfacing as the httpx error the providers classify."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

import httpx
import pytest
from servers import free_port

from aifuncs.providers._transport import LeanTransport

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter, int], Awaitable[None]]


class Script:
    """A server whose every connection runs `handler(reader, writer, connection_number)`."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections = 0

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        with contextlib.suppress(ConnectionError):
            await self.handler(reader, writer, self.connections)
        writer.close()


@contextlib.asynccontextmanager
async def serving(handler: Handler) -> AsyncIterator[tuple[Script, httpx.AsyncClient, str]]:
    script = Script(handler)
    server = await asyncio.start_server(script._serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with httpx.AsyncClient(transport=LeanTransport(), timeout=2.0) as client:
        yield script, client, f"http://127.0.0.1:{port}/x"
    server.close()


async def read_request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = next(
        (
            int(line.split(b":")[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length")
        ),
        0,
    )
    return await reader.readexactly(length)


def reply(body: bytes, *extra: bytes) -> bytes:
    headers = b"".join(h + b"\r\n" for h in extra)
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n%s\r\n%s" % (len(body), headers, body)


async def echo_forever(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
    while True:
        body = await read_request(reader)
        writer.write(reply(body))
        await writer.drain()


def run(coroutine: Awaitable[None]) -> None:
    asyncio.run(coroutine)  # type: ignore[arg-type]


def test_one_connection_serves_many_requests() -> None:
    async def main() -> None:
        async with serving(echo_forever) as (script, client, url):
            for i in range(20):
                response = await client.post(url, json={"i": i})
                assert response.json() == {"i": i}
            assert script.connections == 1

    run(main())


def test_concurrent_requests_each_get_their_own_reply() -> None:
    async def main() -> None:
        async with serving(echo_forever) as (script, client, url):
            replies = await asyncio.gather(*(client.post(url, json=[i]) for i in range(40)))
            assert [r.json() for r in replies] == [[i] for i in range(40)]
            again = await asyncio.gather(*(client.post(url, json=[i]) for i in range(40)))
            assert [r.json() for r in again] == [[i] for i in range(40)]
            assert script.connections <= 40  # the second round reused the first round's connections

    run(main())


def test_a_connection_the_server_closed_while_idle_is_replaced() -> None:
    async def one_reply_then_hang_up(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int
    ) -> None:
        body = await read_request(reader)
        writer.write(reply(body))  # keep-alive implied, yet the server closes
        await writer.drain()

    async def main() -> None:
        async with serving(one_reply_then_hang_up) as (script, client, url):
            for i in range(3):
                assert (await client.post(url, content=b"abc")).content == b"abc"
                await asyncio.sleep(0.01 * (i % 2))  # reuse both before and after the close is seen
            assert script.connections == 3

    run(main())


def test_connection_close_and_chunked_replies() -> None:
    async def chunked_then_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
        await read_request(reader)
        writer.write(
            b"HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n"
            b"X-Thing: yes\r\n\r\n3\r\nabc\r\n4\r\ndefg\r\n0\r\n\r\n"
        )
        await writer.drain()

    async def main() -> None:
        async with serving(chunked_then_close) as (script, client, url):
            for _ in range(2):
                response = await client.post(url, content=b"x")
                assert (response.status_code, response.content) == (201, b"abcdefg")
                assert response.headers["x-thing"] == "yes"
            assert script.connections == 2

    run(main())


def test_failures_become_httpx_errors() -> None:
    async def never_answers(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
        await read_request(reader)
        await asyncio.sleep(5)

    async def drops_mid_reply(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial")
        await writer.drain()

    async def drops_at_once(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
        await read_request(reader)

    async def main() -> None:
        async with serving(never_answers) as (_, client, url):
            with pytest.raises(httpx.ReadTimeout):
                await client.post(url, content=b"x", timeout=0.2)
        for handler in (drops_mid_reply, drops_at_once):
            async with serving(handler) as (_, client, url):
                with pytest.raises(httpx.RemoteProtocolError):
                    await client.post(url, content=b"x")
        async with httpx.AsyncClient(transport=LeanTransport()) as client:
            with pytest.raises(httpx.ConnectError, match="Could not connect"):
                await client.post(f"http://127.0.0.1:{free_port()}/x", content=b"x")

    run(main())


def test_a_cancelled_request_does_not_leave_its_connection_for_reuse() -> None:
    async def slow_then_echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, number: int) -> None:
        while True:
            body = await read_request(reader)
            if number == 1:
                await asyncio.sleep(0.5)
            writer.write(reply(body))
            await writer.drain()

    async def main() -> None:
        async with serving(slow_then_echo) as (script, client, url):
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.1):
                    await client.post(url, content=b"first")
            # The late reply to "first" must not be read as the answer to "second".
            assert (await client.post(url, content=b"second")).content == b"second"
            assert script.connections == 2

    run(main())
