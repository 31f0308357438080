"""Who a request is: `Authorization: Bearer <token>`, checked on every route but the health ones.

A missing header is 401 with `WWW-Authenticate: Bearer`; a malformed, unknown, expired or revoked token 401
with `error="invalid_token"` (RFC 6750). Identities are kept per token (by its hash) and rechecked at most once a
second, so a revoked token stops working within a second without a lookup per request.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from pathlib import Path

from starlette.requests import Request

from aifuncs.governance import Identity, InvalidToken, identify
from aifuncs.server._errors import unauthenticated

__all__ = ["Authenticator"]

_KEPT = 4096


class Authenticator:
    def __init__(self, home: Path) -> None:
        self.home = home
        self._known: OrderedDict[bytes, Identity] = OrderedDict()
        self._lock = threading.Lock()

    def known(self, request: Request) -> Identity | None:
        """The caller's identity when it is kept and not due a recheck: cheap enough for the event loop.
        None means ask `identity` (in a worker thread: it reads SQLite)."""
        key, _ = _token(request)
        with self._lock:
            found = self._known.get(key)
        return None if found is None or found.due else found

    def identity(self, request: Request) -> Identity:
        key, token = _token(request)
        with self._lock:
            found = self._known.get(key)
            if found is not None:
                self._known.move_to_end(key)
        try:
            if found is None:
                found = identify(token, self.home)
                with self._lock:
                    self._known[key] = found
                    while len(self._known) > _KEPT:
                        self._known.popitem(last=False)
            else:
                found.recheck()
        except InvalidToken as error:
            with self._lock:
                self._known.pop(key, None)
            raise unauthenticated(str(error)) from None
        return found


def _token(request: Request) -> tuple[bytes, str]:
    """The bearer token of a request and its hash (the key it is kept under); 401 if there is none."""
    header = request.headers.get("authorization")
    if not header:
        raise unauthenticated("This route needs a token: send Authorization: Bearer <token>.", invalid=False)
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise unauthenticated("Send the token as Authorization: Bearer <token>.")
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest(), token
