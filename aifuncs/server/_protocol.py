"""uvicorn's httptools protocol with the bounds a server facing untrusted clients needs (slowloris and kin).

uvicorn bounds only the wait between requests on a kept connection. Here, too:
- a request must arrive whole (head and body) within `client_timeout_s` of its first byte, or of the
  connection's opening: a client that sends half a header, or a body a byte at a time, is closed (408
  when nothing is being answered on it);
- a request head is at most `max_head_bytes` (431 past it): a stream of header lines is no memory sink;
- a worker holds at most `max_connections`: one more closes the oldest that waits on its client (idle,
  or still sending), so stalled sockets cannot crowd out real requests; with none waiting, the newcomer
  gets 503.
Time spent answering (a model call may take minutes) is never bounded here: only what the client owes.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

__all__ = ["GuardedHttpTools"]


class GuardedHttpTools(HttpToolsProtocol):
    def __init__(
        self,
        *args: Any,
        client_timeout_s: float = 10.0,
        max_head_bytes: int = 64 * 1024,
        max_connections: int = 1024,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.client_timeout_s = client_timeout_s
        self.max_head_bytes = max_head_bytes
        self.max_connections = max_connections
        self._deadline: asyncio.TimerHandle | None = None
        self._head_bytes = 0
        self._heading = True  # the next bytes are a request head
        self._opened = time.monotonic()

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()  # a connection that sends nothing is closed too
        if len(self.connections) > self.max_connections:
            self._shed()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._deadline is None and self._awaits_client():
            self._arm()  # the first bytes of a request: it has client_timeout_s to arrive whole
        if self._heading:
            self._head_bytes += len(data)
        super().data_received(data)
        if self._heading and self._head_bytes > self.max_head_bytes and not self.transport.is_closing():
            self._refuse(431, f"The request head is over {self.max_head_bytes // 1024} KiB.")

    def on_headers_complete(self) -> None:
        self._heading, self._head_bytes = False, 0
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._disarm()  # all the client owes has arrived; answering takes what it takes
        self._heading = True

    def _awaits_client(self) -> bool:
        """Whether this connection waits on its client (new, idle, or mid-request), not on the app."""
        cycle = self.cycle
        return cycle is None or cycle.response_complete or cycle.more_body

    def _arm(self) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(self.client_timeout_s, self._expired)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expired(self) -> None:
        self._deadline = None
        if self.transport.is_closing():
            return
        if self._head_bytes and (self.cycle is None or self.cycle.response_complete):
            self._refuse(408, f"The request did not arrive within {self.client_timeout_s:g} s.")
        else:
            self.transport.close()  # mid-body: the app sees the client gone

    def _shed(self) -> None:
        """One connection too many: close the oldest that waits on its client, or refuse this one."""
        waiting = [
            c
            for c in self.connections
            if isinstance(c, GuardedHttpTools) and c is not self and c._awaits_client()
        ]
        if waiting:
            oldest = min(waiting, key=lambda c: c._opened)
            oldest.transport.close()
        else:
            self._refuse(503, "The server holds all the connections it takes; retry shortly.", retry=True)

    def _refuse(self, status: int, message: str, retry: bool = False) -> None:
        body = message.encode()
        lines = [
            f"HTTP/1.1 {status} {_REASONS[status]}",
            "content-type: text/plain; charset=utf-8",
            f"content-length: {len(body)}",
            *(["retry-after: 1"] if retry else []),
            "connection: close",
        ]
        self.transport.write(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
        self.transport.close()


_REASONS = {408: "Request Timeout", 431: "Request Header Fields Too Large", 503: "Service Unavailable"}
