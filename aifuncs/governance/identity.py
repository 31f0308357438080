"""Who a process, a connection or a request acts as.

    identity = identify(token)        # a token's principal; without one, the OS account owning AIFUNCS_HOME
    identity.principal.name
    identity.recheck()                # a token revoked or expired since is refused from then on

`current()` is the process's own identity (`AIFUNCS_TOKEN`, else the OS account), which the catalog's module
functions, pandas and jobs act as. A connection binds the identity it was opened with (engines/duckdb.py).
The token itself stays inside the Identity: never in its repr, never in an error.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from aifuncs._home import home
from aifuncs.governance.principals import Principal, acting_as

__all__ = ["Identity", "current", "identify"]

RECHECK_S = 1.0  # a token is looked up again at most this often: revocation holds within a second


@dataclass
class Identity:
    principal: Principal
    home: Path
    _token: str | None = field(default=None, repr=False)
    _checked_at: float = field(default=0.0, repr=False)

    @property
    def name(self) -> str:
        return self.principal.name

    _checking: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    @property
    def due(self) -> bool:
        """Whether the next `recheck` looks the token up (it was last checked a second ago or more)."""
        return self._token is not None and time.monotonic() - self._checked_at >= RECHECK_S

    def recheck(self) -> None:
        """Refuse (InvalidToken) if the token was revoked or expired, or its principal deleted, since.

        One thread looks the token up; others arriving meanwhile go on as the identity last checked (a
        burst of requests at the turn of a second would otherwise all write the token's last use at once)."""
        if not self.due or not self._checking.acquire(blocking=False):
            return
        try:
            if self.due:
                self.principal = acting_as(self.home, self._token)
                self._checked_at = time.monotonic()
        finally:
            self._checking.release()


def identify(token: str | None = None, state: Path | None = None) -> Identity:
    """The identity of `token` (checked now), else of `AIFUNCS_TOKEN`, else the OS account that owns the home."""
    where = state or home()
    token = token if token is not None else os.environ.get("AIFUNCS_TOKEN") or None
    return Identity(acting_as(where, token), where, token, time.monotonic())


_current: dict[tuple[Path, str | None], Identity] = {}


def current() -> Identity:
    """The process's identity under the current AIFUNCS_HOME and AIFUNCS_TOKEN (rechecked, not re-made)."""
    key = (home(), os.environ.get("AIFUNCS_TOKEN") or None)
    found = _current.get(key)
    if found is None:
        found = _current[key] = identify(key[1], key[0])
    else:
        found.recheck()
    return found
