"""Access tokens for users and service principals: made, shown once, kept only as a hash.

A token reads `aif_u_<30 base62 characters><6 base62 characters of CRC32>` (`u` a user's, `s` a service
principal's): the prefix tells a secret scanner what it found, and the checksum lets it, or this module,
reject a mistyped or made-up token without a lookup. The store keeps the token's SHA-256, never the token,
and a display prefix (`aif_u_AbC...`) to tell tokens apart in listings; a lookup is by hash, compared in
constant time. Tokens expire (90 days unless told otherwise), can be revoked, and record when they were last
used. The table lives in the catalog's SQLite file beside the endpoints.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import secrets
import sqlite3
import string
import zlib
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from aifuncs.errors import ConfigError
from aifuncs.governance._sqlite import transaction
from aifuncs.storage import Connection, shared

__all__ = ["Token", "TokenStore", "InvalidToken", "check_format"]

PREFIX = "aif_"
KINDS = {"user": "u", "service_principal": "s"}
# The home's owner (the OS account that owns AIFUNCS_HOME, an admin not stored as a principal) has user
# tokens, recorded under this kind: only `principals.acting_as` turns one into the owner, and only while that
# account still owns the home. A stored user's token never reads as one (its kind is stored, not read from it).
OWNER = "owner"
_LETTERS = {**KINDS, OWNER: KINDS["user"]}
_BODY = 30  # base62 characters: ~178 bits
_CHECK = 6  # base62 characters of CRC32 (up to 2^32 < 62^6)
_ALPHABET = string.digits + string.ascii_letters
DEFAULT_DAYS = 90
_NOTE_WAIT_S = 0.05  # how long noting a token's last use waits for a locked catalog

_SCHEMA = """
CREATE TABLE IF NOT EXISTS tokens (
    id INTEGER PRIMARY KEY,
    hash BLOB NOT NULL UNIQUE,
    display TEXT NOT NULL,
    principal TEXT NOT NULL,
    kind TEXT NOT NULL,
    comment TEXT NOT NULL DEFAULT '',
    created_at TEXT NOT NULL,
    expires_at TEXT,
    revoked_at TEXT,
    last_used_at TEXT
);
CREATE INDEX IF NOT EXISTS tokens_by_principal ON tokens(principal);
"""


class InvalidToken(ConfigError):
    """A token that is malformed, unknown, expired or revoked (the message never repeats the token)."""


@dataclass(frozen=True)
class Token:
    """A token as listed: never its secret."""

    id: int
    display: str  # the first characters, to tell tokens apart
    principal: str
    kind: str  # user | service_principal | owner (the home's owner's)
    comment: str
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None
    last_used_at: datetime | None


def _base62(number: int, width: int) -> str:
    digits = []
    for _ in range(width):
        number, digit = divmod(number, 62)
        digits.append(_ALPHABET[digit])
    return "".join(reversed(digits))


def _checksum(text: str) -> str:
    return _base62(zlib.crc32(text.encode()), _CHECK)


def _make(kind: str) -> str:
    head = PREFIX + _LETTERS[kind] + "_" + "".join(secrets.choice(_ALPHABET) for _ in range(_BODY))
    return head + _checksum(head)


def check_format(token: str) -> str:
    """The token's kind (user, service_principal) if it is well formed with a right checksum; else
    InvalidToken, without a lookup."""
    kind = next((k for k, letter in KINDS.items() if token.startswith(f"{PREFIX}{letter}_")), None)
    length = len(PREFIX) + 2 + _BODY + _CHECK
    if kind is None or len(token) != length or any(c not in _ALPHABET for c in token[len(PREFIX) + 2 :]):
        raise InvalidToken("Not an aifuncs token: it should read aif_u_... or aif_s_... (42 characters).")
    if not hmac.compare_digest(_checksum(token[:-_CHECK]), token[-_CHECK:]):
        raise InvalidToken("The token's checksum does not match: it was mistyped or cut short.")
    return kind


def _hash(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def _now() -> datetime:
    return datetime.now(UTC)


def _time(text: str | None) -> datetime | None:
    return None if text is None else datetime.fromisoformat(text)


class TokenStore:
    """Tokens in a SQLite file (by default the catalog's): create, list, revoke, authenticate."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __repr__(self) -> str:
        return f"TokenStore({str(self.path)!r})"

    def _session(self) -> contextlib.AbstractContextManager[Connection]:
        return transaction(self.path, _SCHEMA)

    def create(
        self, principal: str, *, kind: str = "user", days: int | None = DEFAULT_DAYS, comment: str = ""
    ) -> tuple[str, Token]:
        """A new token for `principal`: the secret (shown this once) and its record. `days=None`: no expiry."""
        if kind not in _LETTERS:
            raise ConfigError(f"A token belongs to a user or a service_principal, not a {kind!r}.")
        if not principal:
            raise ConfigError("A token needs the principal it acts as.")
        if days is not None and days <= 0:
            raise ConfigError(f"A token's lifetime is a positive number of days, not {days}.")
        secret = _make(kind)
        created = _now()
        expires = None if days is None else created + timedelta(days=days)
        display = secret[: len(PREFIX) + 2 + 4] + "..."
        with self._session() as db:
            cursor = db.execute(
                "INSERT INTO tokens (hash, display, principal, kind, comment, created_at, expires_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?) RETURNING id",
                (_hash(secret), display, principal, kind, comment, created.isoformat(),
                 None if expires is None else expires.isoformat()),
            )  # fmt: skip
            token_id = int(cursor.fetchone()[0])
        return secret, Token(token_id, display, principal, kind, comment, created, expires, None, None)

    def list(self, principal: str | None = None) -> list[Token]:
        query = "SELECT id, display, principal, kind, comment, created_at, expires_at, revoked_at, last_used_at FROM tokens"
        with self._session() as db:
            rows = (
                db.execute(query + " WHERE principal = ? ORDER BY id", (principal,))
                if principal is not None
                else db.execute(query + " ORDER BY id")
            ).fetchall()
        return [
            Token(r[0], r[1], r[2], r[3], r[4], _time(r[5]) or _now(), _time(r[6]), _time(r[7]), _time(r[8]))
            for r in rows
        ]

    def revoke(self, token_id: int) -> None:
        with self._session() as db:
            changed = db.execute(
                "UPDATE tokens SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL",
                (_now().isoformat(), token_id),
            ).rowcount
        if not changed:
            raise ConfigError(
                f"There is no token {token_id} that is not revoked already (aifuncs tokens list)."
            )

    def revoke_all(self, principal: str) -> int:
        """Revoke every live token of `principal` (it is being deleted); how many."""
        with self._session() as db:
            return db.execute(
                "UPDATE tokens SET revoked_at = ? WHERE principal = ? AND revoked_at IS NULL",
                (_now().isoformat(), principal),
            ).rowcount

    def _note_use(self, token_id: int, now: datetime) -> None:
        """Record the token's last use, if the file can be written at once: another process holding it (a
        long write, a backup) must not fail or stall authentication. A use not recorded now is by the next."""
        database = shared(self.path)
        if database is not None:
            with database.try_transaction(self.path.stem) as conn:
                if conn is not None:
                    conn.execute(
                        "UPDATE tokens SET last_used_at = ? WHERE id = ?", (now.isoformat(), token_id)
                    )
            return
        db = sqlite3.connect(self.path, timeout=_NOTE_WAIT_S)
        try:
            with db:
                db.execute("UPDATE tokens SET last_used_at = ? WHERE id = ?", (now.isoformat(), token_id))
        except sqlite3.OperationalError:
            pass
        finally:
            db.close()

    def live(self, token_id: int) -> Token:
        """The record of token `token_id` while it may still be used (a browser session made with it checks this
        on each request); InvalidToken once it is revoked, expired or gone."""
        now = _now()
        with self._session() as db:
            row = db.execute(
                "SELECT id, display, principal, kind, comment, created_at, expires_at, revoked_at, last_used_at"
                " FROM tokens WHERE id = ?",
                (token_id,),
            ).fetchone()
        if row is None:
            raise InvalidToken("The token this session was signed in with no longer exists: sign in again.")
        expires, revoked = _time(row[6]), _time(row[7])
        if revoked is not None:
            raise InvalidToken(f"The token {row[1]} was revoked on {revoked:%Y-%m-%d}.")
        if expires is not None and expires <= now:
            raise InvalidToken(f"The token {row[1]} expired on {expires:%Y-%m-%d}; make a new one.")
        return Token(
            row[0], row[1], row[2], row[3], row[4], _time(row[5]) or now, expires, None, _time(row[8])
        )

    def authenticate(self, token: str) -> Token:
        """The token's record, its last use noted; InvalidToken if it is malformed, unknown, expired or
        revoked (all four read alike to the caller but for their reason)."""
        check_format(token)
        digest = _hash(token)
        now = _now()
        with self._session() as db:
            row = db.execute(
                "SELECT id, hash, display, principal, kind, comment, created_at, expires_at, revoked_at FROM tokens"
                " WHERE hash = ?",
                (digest,),
            ).fetchone()
            if row is None or not hmac.compare_digest(row[1], digest):
                raise InvalidToken("Unknown token: it was never made here, or its store was replaced.")
            expires, revoked = _time(row[7]), _time(row[8])
            if revoked is not None:
                raise InvalidToken(f"The token {row[2]} was revoked on {revoked:%Y-%m-%d}.")
            if expires is not None and expires <= now:
                raise InvalidToken(f"The token {row[2]} expired on {expires:%Y-%m-%d}; make a new one.")
        self._note_use(int(row[0]), now)
        return Token(row[0], row[2], row[3], row[4], row[5], _time(row[6]) or now, expires, None, now)
