"""Kept connections end now and then, so that clients spread again over the workers.

Workers share one listening socket; the kernel hands each new connection to one of them. A client that keeps
its connection open stays on that worker for good: after a worker restarts, every keep-alive client sits on
the survivors, and the new worker idles. So a connection that has served `max_requests` requests, or has
been open `max_age_s` seconds, gets `Connection: close` on its next response (the answer is whole: the client
reconnects for the next request, to whichever worker the kernel picks), as nginx's `keepalive_requests` and
`keepalive_time` do.

ASGI gives no connection object: a connection is told by its client's address and port, which are its own
while it is open. An entry outlives its connection only until its age passes `max_age_s`, when it is pruned;
a new connection that took a pruned one's port meanwhile is merely closed early once.
"""

from __future__ import annotations

import os
import time
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from typing import Any

from aifuncs.errors import ConfigError

__all__ = ["MAX_AGE_S", "MAX_REQUESTS", "Rebalance", "served_app"]

MAX_REQUESTS = 1000  # nginx's keepalive_requests
MAX_AGE_S = 30.0  # how long, at most, a restarted worker waits for its share of kept-alive clients

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]


class Rebalance:
    """ASGI middleware: `Connection: close` on the response that ends a connection's share."""

    def __init__(
        self,
        app: App,
        max_requests: int = MAX_REQUESTS,
        max_age_s: float = MAX_AGE_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_requests < 1 or not max_age_s > 0:
            raise ConfigError("A connection serves at least 1 request, for more than 0 seconds.")
        self.app, self.max_requests, self.max_age_s, self._clock = app, max_requests, max_age_s, clock
        self._seen: dict[tuple[Any, ...], tuple[float, int]] = {}  # connection -> (first seen, requests)
        self._pruned = clock()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        client = scope.get("client")
        if scope["type"] != "http" or not client:
            await self.app(scope, receive, send)
            return
        if self._ends_share((tuple(client), tuple(scope.get("server") or ()))):
            await self.app(scope, receive, _closing(send))
        else:
            await self.app(scope, receive, send)

    def _ends_share(self, key: tuple[Any, ...]) -> bool:
        """Count a request of connection `key`; True when it is the connection's last."""
        now = self._clock()
        first, served = self._seen.get(key, (now, 0))
        served += 1
        if served >= self.max_requests or now - first >= self.max_age_s:
            self._seen.pop(key, None)
            return True
        self._seen[key] = (first, served)
        if now - self._pruned >= self.max_age_s:  # connections that closed on their own leave no entry
            self._pruned = now
            self._seen = {k: v for k, v in self._seen.items() if now - v[0] < self.max_age_s}
        return False


def _closing(send: Send) -> Send:
    async def closing(message: Message) -> None:
        if message["type"] == "http.response.start":
            headers = [(k, v) for k, v in message.get("headers", ()) if k.lower() != b"connection"]
            message = {**message, "headers": [*headers, (b"connection", b"close")]}
        await send(message)

    return closing


def served_app() -> Rebalance:
    """`aifuncs serve`'s app: the server's, its kept connections rebalanced (settings from the environment)."""
    from aifuncs.server._app import app

    requests, age = _settings(os.environ)
    return Rebalance(app(), requests, age)


def _settings(environ: Mapping[str, str]) -> tuple[int, float]:
    """AIFUNCS_SERVE_CONNECTION_REQUESTS and AIFUNCS_SERVE_CONNECTION_S, else the defaults."""
    given = {name: environ.get(f"AIFUNCS_SERVE_CONNECTION_{name}") for name in ("REQUESTS", "S")}
    try:
        requests = int(given["REQUESTS"]) if given["REQUESTS"] else MAX_REQUESTS
        age = float(given["S"]) if given["S"] else MAX_AGE_S
    except ValueError:
        raise ConfigError(
            "AIFUNCS_SERVE_CONNECTION_REQUESTS is a whole number of requests and AIFUNCS_SERVE_CONNECTION_S a"
            f" number of seconds (got {given['REQUESTS']!r} and {given['S']!r})."
        ) from None
    return requests, age
