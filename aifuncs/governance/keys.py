"""Encryption at rest: AES-256-GCM under data keys wrapped by the key-encryption key the operator holds.

    export AIFUNCS_ENCRYPTION_KEY=$(aifuncs keys generate)       # or AIFUNCS_ENCRYPTION_KEY_FILE=/path (mode 600)

With a key configured, logged payloads and kept answers (the cache, job checkpoints) are sealed before they
reach a file. Each value gets a fresh 96-bit nonce; its associated data binds it to where it belongs (table,
row, endpoint, principal), so a ciphertext moved to another row does not open. Data keys are random, kept in
`AIFUNCS_HOME/keys.db` wrapped with AES-KW (RFC 3394) by the key-encryption key, which is never stored:
rotating it (`aifuncs keys rotate`) rewraps the data keys and touches no row. A wrong key, a flipped byte or
a swapped row is `EncryptionError`, never wrong data. Without a key, values are stored in clear.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import secrets
import sqlite3
import stat
import struct
import threading
from datetime import UTC, datetime
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.keywrap import InvalidUnwrap, aes_key_unwrap, aes_key_wrap

from aifuncs._fork import after_fork_in_child, renewed_in_child
from aifuncs._home import home_file, private_file
from aifuncs._wal import use_wal
from aifuncs.errors import ConfigError

__all__ = ["EncryptionError", "KeyRing", "generate_key", "key_from_environment", "keyring", "parse_key"]

_MAGIC = b"\xa1\xf5"  # the first bytes of every sealed value (stored text never starts so)
_HEADER = struct.Struct(">2sI12s")  # magic, data key id, nonce
_SCHEMA = """
CREATE TABLE IF NOT EXISTS data_keys (
    id INTEGER PRIMARY KEY,
    wrapped BLOB NOT NULL,
    created_at TEXT NOT NULL
);
"""


class EncryptionError(ConfigError):
    """A sealed value that does not open: the wrong key, or a value changed or moved."""


def generate_key() -> str:
    """A new key-encryption key, as AIFUNCS_ENCRYPTION_KEY takes it (URL-safe base64 of 32 random bytes)."""
    return base64.urlsafe_b64encode(secrets.token_bytes(32)).decode()


def parse_key(text: str, where: str) -> bytes:
    """32 bytes from base64 (either alphabet) or 64 hex digits."""
    text = text.strip()
    candidates = []
    if len(text) == 64:
        try:
            candidates.append(binascii.unhexlify(text))
        except binascii.Error:
            pass
    for decode in (base64.urlsafe_b64decode, base64.standard_b64decode):
        try:
            candidates.append(decode(text + "=" * (-len(text) % 4)))
        except (binascii.Error, ValueError):
            pass
    for key in candidates:
        if len(key) == 32:
            return key
    raise ConfigError(
        f"{where} is not a 256-bit key: give 32 random bytes as base64 or 64 hex digits"
        " (make one with `aifuncs keys generate`)."
    )


def key_from_environment() -> bytes | None:
    """The key-encryption key of AIFUNCS_ENCRYPTION_KEY or AIFUNCS_ENCRYPTION_KEY_FILE; None when neither is set."""
    text = os.environ.get("AIFUNCS_ENCRYPTION_KEY")
    if text:
        return parse_key(text, "AIFUNCS_ENCRYPTION_KEY")
    path = os.environ.get("AIFUNCS_ENCRYPTION_KEY_FILE")
    if not path:
        return None
    return read_key_file(Path(path))


def read_key_file(path: Path) -> bytes:
    try:
        mode = path.stat().st_mode
    except OSError as error:
        raise ConfigError(f"Cannot read the key file {str(path)!r}: {error.strerror or error}.") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(
            f"The key file {str(path)!r} can be read by others (mode {stat.S_IMODE(mode):o}): the key would not"
            f" be a secret. Run `chmod 600 {path}` and try again."
        )
    return parse_key(path.read_text(), f"The key file {str(path)!r}")


def fingerprint(key: bytes) -> str:
    return hashlib.sha256(b"aifuncs key fingerprint" + key).hexdigest()[:12]


class KeyRing:
    """The data keys of one home, unwrapped with one key-encryption key, and sealing with the newest."""

    def __init__(self, path: Path, kek: bytes) -> None:
        self.path = path
        self._kek = kek
        self._keys: dict[int, AESGCM] = {}
        self._current: int | None = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"KeyRing({str(self.path)!r}, key {self.fingerprint})"  # never the key itself

    @property
    def fingerprint(self) -> str:
        return fingerprint(self._kek)

    def _db(self) -> sqlite3.Connection:
        private_file(self.path)
        db = sqlite3.connect(self.path, timeout=30)
        use_wal(db)
        db.executescript(_SCHEMA)
        return db

    def _unwrap(self, wrapped: bytes) -> bytes:
        try:
            return aes_key_unwrap(self._kek, wrapped)
        except InvalidUnwrap:
            raise EncryptionError(
                f"The encryption key (fingerprint {fingerprint(self._kek)}) is not the one {str(self.path)!r} was"
                " made with: set AIFUNCS_ENCRYPTION_KEY (or _FILE) to that key. Nothing was read or changed."
            ) from None

    def _key(self, key_id: int) -> AESGCM:
        found = self._keys.get(key_id)
        if found is None:
            db = self._db()
            try:
                row = db.execute("SELECT wrapped FROM data_keys WHERE id = ?", (key_id,)).fetchone()
            finally:
                db.close()
            if row is None:
                raise EncryptionError(
                    f"A value was sealed with data key {key_id}, which {str(self.path)!r} lacks."
                )
            found = self._keys[key_id] = AESGCM(self._unwrap(bytes(row[0])))
        return found

    def _current_key(self) -> tuple[int, AESGCM]:
        with self._lock:
            if self._current is None:
                db = self._db()
                try:
                    with db:
                        row = db.execute(
                            "SELECT id, wrapped FROM data_keys ORDER BY id DESC LIMIT 1"
                        ).fetchone()
                        if row is None:
                            wrapped = aes_key_wrap(self._kek, AESGCM.generate_key(256))
                            cursor = db.execute(
                                "INSERT INTO data_keys (wrapped, created_at) VALUES (?, ?)",
                                (wrapped, datetime.now(UTC).isoformat()),
                            )
                            row = (cursor.lastrowid, wrapped)
                finally:
                    db.close()
                self._keys[int(row[0])] = AESGCM(self._unwrap(bytes(row[1])))
                self._current = int(row[0])
            return self._current, self._keys[self._current]

    def seal(self, plaintext: bytes, aad: bytes) -> bytes:
        key_id, key = self._current_key()
        nonce = secrets.token_bytes(12)
        return _HEADER.pack(_MAGIC, key_id, nonce) + key.encrypt(nonce, plaintext, aad)

    def open(self, sealed: bytes, aad: bytes) -> bytes:
        if len(sealed) < _HEADER.size + 16 or not sealed.startswith(_MAGIC):
            raise EncryptionError(
                "A stored value is not a sealed value: it was changed, or written by something else."
            )
        _, key_id, nonce = _HEADER.unpack_from(sealed)
        try:
            return self._key(key_id).decrypt(nonce, sealed[_HEADER.size :], aad)
        except InvalidTag:
            raise EncryptionError(
                "A stored value does not open: it was changed, or moved from another row. It was not used."
            ) from None

    def rotate(self, new_kek: bytes) -> int:
        """Rewrap every data key with `new_kek` in one transaction (no row is touched); returns how many."""
        db = self._db()
        try:
            with db:
                db.execute("BEGIN IMMEDIATE")
                rows = db.execute("SELECT id, wrapped FROM data_keys").fetchall()
                rewrapped = [(aes_key_wrap(new_kek, self._unwrap(bytes(w))), i) for i, w in rows]
                db.executemany("UPDATE data_keys SET wrapped = ? WHERE id = ?", rewrapped)
        finally:
            db.close()
        self._kek = new_kek
        return len(rows)


def is_sealed(value: object) -> bool:
    return isinstance(value, bytes) and value.startswith(_MAGIC)


_rings: dict[tuple[Path, bytes], KeyRing] = {}
_rings_lock = threading.Lock()
renewed_in_child(globals(), "_rings_lock")
after_fork_in_child(_rings.clear)  # a ring's own lock may have been held at the fork: the child makes its own


def keyring() -> KeyRing | None:
    """The key ring of the current home under the configured key; None when no key is configured."""
    kek = key_from_environment()
    if kek is None:
        return None
    path = home_file("keys.db")
    with _rings_lock:
        found = _rings.get((path, kek))
        if found is None:
            found = _rings[(path, kek)] = KeyRing(path, kek)
        return found
