"""Browser sessions of the UI: signed in with a token, or once with the owner's sign-in link.

    sessions = Sessions(home)
    link_ticket = sessions.ticket()              # `aifuncs ui` / `aifuncs serve` print /ui/login?ticket=...
    cookie = sessions.sign_in(token)             # or sessions.redeem(ticket): the cookie's value
    principal = sessions.principal(cookie)       # None once signed out, expired, or its token revoked

Only hashes are stored (in `ui.db` under AIFUNCS_HOME, shared by every worker). A session made with a token
lives no longer than the token and ends when it is revoked (checked on each request); a ticket signs in once,
within `TICKET_S`, and only as the account that owns the home. The CSRF token of a session is derived from
its cookie, so nothing more is stored and a page of another origin cannot know it.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import secrets
import time
from collections.abc import Iterator
from pathlib import Path

from aifuncs.errors import ConfigError
from aifuncs.governance._sqlite import transaction
from aifuncs.governance.principals import Principal, owner_of, principal_of
from aifuncs.governance.tokens import InvalidToken, TokenStore
from aifuncs.storage import Connection

__all__ = ["COOKIE", "SESSION_S", "SignInFailed", "Sessions", "csrf_token"]

COOKIE = "aifuncs_session"
SESSION_S = 12 * 3600  # a browser session, at most (less when its token expires sooner)
TICKET_S = 24 * 3600  # a printed sign-in link works once within this

_SCHEMA = """
CREATE TABLE IF NOT EXISTS ui_tickets (
    hash BLOB PRIMARY KEY, principal TEXT NOT NULL, expires_at REAL NOT NULL, used_at REAL
);
CREATE TABLE IF NOT EXISTS ui_sessions (
    hash BLOB PRIMARY KEY, principal TEXT NOT NULL, token_id INTEGER, created_at REAL NOT NULL,
    expires_at REAL NOT NULL
);
"""


class SignInFailed(ConfigError):
    """A token or sign-in link that does not sign anyone in (the message never repeats it)."""


def _hash(secret: str) -> bytes:
    return hashlib.sha256(secret.encode("utf-8", "surrogateescape")).digest()


def csrf_token(cookie: str) -> str:
    """The session's CSRF token: forms and htmx send it back with every change."""
    return hmac.new(cookie.encode("utf-8", "surrogateescape"), b"aifuncs-ui-csrf", hashlib.sha256).hexdigest()


class Sessions:
    def __init__(self, home: Path) -> None:
        self.home = home
        self.path = home / "ui.db"
        self.tokens = TokenStore(home / "catalog.db")

    def __repr__(self) -> str:
        return f"Sessions({str(self.path)!r})"

    @contextlib.contextmanager
    def _db(self) -> Iterator[Connection]:
        self.home.mkdir(parents=True, exist_ok=True)
        with transaction(self.path, _SCHEMA) as db:
            yield db

    def ticket(self) -> str:
        """A one-time sign-in ticket for the account that owns the home (what the printed link holds)."""
        secret = secrets.token_urlsafe(32)
        now = time.time()
        with self._db() as db:
            db.execute("DELETE FROM ui_tickets WHERE expires_at < ?", (now,))
            db.execute(
                "INSERT INTO ui_tickets (hash, principal, expires_at) VALUES (?, ?, ?)",
                (_hash(secret), owner_of(self.home), now + TICKET_S),
            )
        return secret

    def redeem(self, ticket: str) -> str:
        """A session for the ticket's owner; the ticket is spent (a second use, or a late one, is refused)."""
        now = time.time()
        with self._db() as db:
            row = db.execute(
                "SELECT principal, expires_at, used_at FROM ui_tickets WHERE hash = ?", (_hash(ticket),)
            ).fetchone()
            if row is None or row[2] is not None or row[1] < now or row[0] != owner_of(self.home):
                raise SignInFailed(
                    "This sign-in link was used already, has expired, or was never made here: run `aifuncs ui`"
                    " again for a new one, or sign in with a token."
                )
            db.execute("UPDATE ui_tickets SET used_at = ? WHERE hash = ?", (now, _hash(ticket)))
            return self._open(db, row[0], None, now + SESSION_S)

    def sign_in(self, token: str) -> str:
        """A session acting as the token's principal, for as long as the token lives (at most `SESSION_S`)."""
        try:
            record = self.tokens.authenticate(token.strip())
            principal_of(self.home, record)
        except ConfigError as error:  # InvalidToken and a deleted principal alike
            raise SignInFailed(f"That token does not sign in: {error}") from None
        expires = time.time() + SESSION_S
        if record.expires_at is not None:
            expires = min(expires, record.expires_at.timestamp())
        with self._db() as db:
            return self._open(db, record.principal, record.id, expires)

    def _open(self, db: Connection, principal: str, token_id: int | None, expires: float) -> str:
        cookie = secrets.token_urlsafe(32)
        now = time.time()
        db.execute("DELETE FROM ui_sessions WHERE expires_at < ?", (now,))
        db.execute(
            "INSERT INTO ui_sessions (hash, principal, token_id, created_at, expires_at) VALUES (?, ?, ?, ?, ?)",
            (_hash(cookie), principal, token_id, now, expires),
        )
        return cookie

    def principal(self, cookie: str | None) -> Principal | None:
        """Who the session acts as now, or None (no such session, expired, or its token no longer works)."""
        if not cookie:
            return None
        with self._db() as db:
            row = db.execute(
                "SELECT principal, token_id, expires_at FROM ui_sessions WHERE hash = ?", (_hash(cookie),)
            ).fetchone()
        if row is None or row[2] < time.time():
            return None
        name, token_id = str(row[0]), row[1]
        try:
            if token_id is None:  # a ticket's session: the owner's, while that account owns the home
                if name != owner_of(self.home):
                    return None
                return Principal(name, "user", admin=True, implicit=True)
            return principal_of(self.home, self.tokens.live(int(token_id)))
        except (InvalidToken, ConfigError):
            return None

    def sign_out(self, cookie: str | None) -> None:
        if cookie:
            with self._db() as db:
                db.execute("DELETE FROM ui_sessions WHERE hash = ?", (_hash(cookie),))
