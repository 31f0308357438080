"""Secret scopes: keys an admin hands out without handing out the server's environment (Databricks' Secrets API).

    secrets = Secrets(home / "catalog.db", actor, keyring())
    secrets.create_scope("llm")                        # admins, or holders of allow-secret-scope-create
    secrets.put("llm", "openai", string_value="sk-...")  # sealed with AES-256-GCM under the home's key
    secrets.put_acl("llm", "analysts", "READ")         # READ: reference it from an endpoint, read it back

A scope is backed by values stored sealed under the home's key (`DATABRICKS`, needs AIFUNCS_ENCRYPTION_KEY)
or by environment variables of the server that an admin binds key by key (`ENVIRONMENT`). Permissions are
READ < WRITE < MANAGE, the highest of a principal's own, its groups' and `users`' (everyone). An endpoint
refers to a key as `{{secrets/scope/key}}`; the reference is checked (READ) when a config is saved and
resolved when a request is sent (`resolve`, definer's rights: the caller of the endpoint needs nothing).
Values never reach repr, errors, logs or the audit log; `get` hands one to a READ holder, as Databricks does.
"""

from __future__ import annotations

import builtins
import contextlib
import os
import re
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from aifuncs.errors import ConfigError, PermissionDenied
from aifuncs.governance._sqlite import transaction
from aifuncs.governance.audit import AuditLog
from aifuncs.governance.keys import KeyRing
from aifuncs.governance.principals import (
    _SCHEMA as _PRINCIPALS_SCHEMA,
)
from aifuncs.governance.principals import (
    CREATE_SECRET_SCOPES,
    Principal,
    PrincipalStore,
)
from aifuncs.storage import Connection

__all__ = [
    "BACKENDS",
    "SECRET_LEVELS",
    "ScopeExists",
    "SecretReference",
    "Secrets",
    "UnknownSecret",
    "check_env_name",
    "parse_reference",
    "resolve",
]

BACKENDS = ("DATABRICKS", "ENVIRONMENT")
SECRET_LEVELS = ("READ", "WRITE", "MANAGE")
EVERYONE = "users"  # Databricks' group of all users: a scope's ACL may name it
_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,128}$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
_REFERENCE = re.compile(r"^\{\{\s*secrets/([A-Za-z0-9_.-]{1,128})/([A-Za-z0-9_.-]{1,128})\s*\}\}$")
_SHORT_REFERENCE = re.compile(r"^([A-Za-z0-9_.-]{1,128})/([A-Za-z0-9_.-]{1,128})$")
RESERVED_ENV_PREFIX = "AIFUNCS_"  # the server's own settings (its encryption key, its token): never a key

_SCHEMA = (
    _PRINCIPALS_SCHEMA
    + """
CREATE TABLE IF NOT EXISTS secret_scopes (
    name TEXT PRIMARY KEY,
    backend_type TEXT NOT NULL,
    created_by TEXT NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS secret_values (
    scope TEXT NOT NULL REFERENCES secret_scopes(name) ON DELETE CASCADE,
    key TEXT NOT NULL,
    sealed BLOB,
    env TEXT,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (scope, key)
);
CREATE TABLE IF NOT EXISTS secret_acls (
    scope TEXT NOT NULL REFERENCES secret_scopes(name) ON DELETE CASCADE,
    principal TEXT NOT NULL,
    permission TEXT NOT NULL,
    granted_at INTEGER,
    PRIMARY KEY (scope, principal)
);
"""
)
# A grant belongs to the principal that held the name when it was made (ms since the epoch): a principal deleted
# and made again holds none of its predecessor's (rows without a time are from before it was kept).
_GRANTED_AT = "ALTER TABLE secret_acls ADD COLUMN granted_at INTEGER"


class UnknownSecret(ConfigError):
    """A secret scope, key or ACL that does not exist."""


class ScopeExists(ConfigError):
    """A secret scope's name is taken."""


@dataclass(frozen=True)
class SecretReference:
    scope: str
    key: str

    def __str__(self) -> str:
        return f"{{{{secrets/{self.scope}/{self.key}}}}}"

    @property
    def short(self) -> str:
        return f"{self.scope}/{self.key}"


def parse_reference(text: Any) -> SecretReference:
    """`{{secrets/scope/key}}` or `scope/key` as a reference; ConfigError naming the form otherwise."""
    value = str(text).strip()
    found = _REFERENCE.match(value) or _SHORT_REFERENCE.match(value)
    if found is None:
        raise ConfigError(
            f"{value!r} is no secret reference: write {{{{secrets/SCOPE/KEY}}}} (or SCOPE/KEY where a reference"
            " is all an option takes)."
        )
    return SecretReference(found.group(1), found.group(2))


def check_env_name(name: str) -> str:
    """An environment variable that may hold a key: a valid name, and none of the server's own settings."""
    if not isinstance(name, str) or not _ENV_NAME.match(name):
        raise ConfigError(f"{name!r} is not an environment variable's name (letters, digits and _).")
    if name.upper().startswith(RESERVED_ENV_PREFIX):
        raise PermissionDenied(
            f"{name} is one of aifuncs' own settings, never a key an endpoint may send: name another variable."
        )
    return name


def _check_name(what: str, name: Any) -> str:
    if not isinstance(name, str) or not _NAME.match(name):
        raise ConfigError(f"Invalid {what} name {name!r}: 1-128 letters, digits, '-', '_' or '.'.")
    return name


def _aad(scope: str, key: str) -> bytes:
    return b"secret\x00" + scope.encode() + b"\x00" + key.encode()


class Secrets:
    """Secret scopes, their values and ACLs in the catalog's SQLite file, changed and read as `actor`."""

    def __init__(self, path: Path, actor: Principal, ring: KeyRing | None) -> None:
        self.path = path
        self.actor = actor
        self._ring = ring
        self._principals = PrincipalStore(path)
        self._audit = AuditLog(path)

    def __repr__(self) -> str:
        return f"Secrets({str(self.path)!r}, actor={self.actor.name!r})"

    @contextlib.contextmanager
    def _db(self) -> Iterator[Connection]:
        with transaction(self.path, _SCHEMA) as db:
            _add_granted_at(db)
            yield db

    def _note(self, action: str, target: str, **details: Any) -> None:
        self._audit.record(self.actor.name, action, target, details)  # names only: never a value

    # permissions

    def level(self, scope: str, principal: Principal | None = None) -> str | None:
        """The highest level `principal` (default: the actor) holds on `scope`; admins MANAGE every scope."""
        who = principal or self.actor
        if who.admin:
            return "MANAGE"
        holders = {who.name, EVERYONE, *self._principals.groups_of(who.name)}
        with self._db() as db:
            rows = db.execute(
                "SELECT a.principal, a.permission, a.granted_at, p.created_at FROM secret_acls a"
                " LEFT JOIN principals p ON p.name = a.principal WHERE a.scope = ?",
                (scope,),
            ).fetchall()
        held = [
            SECRET_LEVELS.index(level)
            for name, level, granted_at, created_at in rows
            if name in holders and (name == EVERYONE or _current(granted_at, created_at))
        ]
        return SECRET_LEVELS[max(held)] if held else None

    def _require(self, scope: str, wanted: str, doing: str) -> str:
        backend = self._backend(scope)
        held = self.level(scope)
        if held is None or SECRET_LEVELS.index(held) < SECRET_LEVELS.index(wanted):
            raise PermissionDenied(
                f"{self.actor.name!r} may not {doing} in the secret scope {scope!r}: that needs {wanted}, and it"
                f" holds {held or 'nothing'}. A MANAGE holder of the scope (or an admin) can grant it"
                f" (aifuncs secrets put-acl {scope} {self.actor.name} {wanted})."
            )
        return backend

    def _backend(self, scope: str) -> str:
        with self._db() as db:
            row = db.execute("SELECT backend_type FROM secret_scopes WHERE name = ?", (scope,)).fetchone()
        if row is None:
            raise UnknownSecret(f"There is no secret scope {scope!r} (aifuncs secrets list-scopes).")
        return str(row[0])

    # scopes

    def create_scope(
        self, scope: str, *, backend_type: str = "DATABRICKS", initial_manage_principal: str | None = None
    ) -> None:
        _check_name("secret scope", scope)
        backend = str(backend_type or "DATABRICKS").upper()
        if backend not in BACKENDS:
            raise ConfigError(f"Unknown scope backend {backend_type!r}: use {' or '.join(BACKENDS)}.")
        if not self._principals.entitled(self.actor, CREATE_SECRET_SCOPES):
            raise PermissionDenied(
                f"{self.actor.name!r} may not create secret scopes: admins do, and principals an admin granted"
                f" {CREATE_SECRET_SCOPES!r}."
            )
        if backend == "ENVIRONMENT" and not self.actor.admin:
            raise PermissionDenied(
                "Only an admin creates ENVIRONMENT scopes: they hand out the server's variables."
            )
        if initial_manage_principal not in (None, "", EVERYONE):
            raise ConfigError(f'initial_manage_principal is "{EVERYONE}" or left out.')
        with self._db() as db:
            if db.execute("SELECT 1 FROM secret_scopes WHERE name = ?", (scope,)).fetchone():
                raise ScopeExists(f"The secret scope {scope!r} already exists.")
            db.execute(
                "INSERT INTO secret_scopes (name, backend_type, created_by, created_at) VALUES (?, ?, ?, ?)",
                (scope, backend, self.actor.name, _now_ms()),
            )
            manager = EVERYONE if initial_manage_principal == EVERYONE else self.actor.name
            if manager == EVERYONE or not self.actor.implicit:  # the home's owner manages every scope already
                db.execute(
                    "INSERT INTO secret_acls (scope, principal, permission, granted_at) VALUES (?, ?, 'MANAGE', ?)",
                    (scope, manager, _now_ms()),
                )
        self._note("secrets.create-scope", scope, backend_type=backend)

    def list_scopes(self) -> builtins.list[dict[str, str]]:
        """Every scope's name and backend (scope names are not secret)."""
        with self._db() as db:
            rows = db.execute("SELECT name, backend_type FROM secret_scopes ORDER BY name").fetchall()
        return [{"name": r[0], "backend_type": r[1]} for r in rows]

    def delete_scope(self, scope: str) -> None:
        self._require(scope, "MANAGE", "delete the scope")
        with self._db() as db:
            db.execute("DELETE FROM secret_scopes WHERE name = ?", (scope,))  # its values and ACLs go with it
        self._note("secrets.delete-scope", scope)

    # values

    def put(
        self,
        scope: str,
        key: str,
        *,
        string_value: str | None = None,
        bytes_value: bytes | None = None,
        environment_variable: str | None = None,
    ) -> None:
        """Store a value (a DATABRICKS scope: sealed) or bind an environment variable (an ENVIRONMENT scope:
        admins only); overwrites."""
        _check_name("secret key", key)
        backend = self._require(scope, "WRITE", f"put the key {key!r}")
        sealed: bytes | None = None
        env: str | None = None
        if backend == "ENVIRONMENT":
            if string_value is not None or bytes_value is not None or not environment_variable:
                raise ConfigError(
                    f"The scope {scope!r} reads its keys from the server's environment: bind the key to a variable"
                    " (environment_variable), not a value."
                )
            if not self.actor.admin:
                raise PermissionDenied(
                    "Only an admin binds a key to one of the server's environment variables."
                )
            env = check_env_name(environment_variable)
        else:
            if environment_variable is not None:
                raise ConfigError(
                    f"The scope {scope!r} stores values; only ENVIRONMENT scopes bind variables."
                )
            if (string_value is None) == (bytes_value is None):
                raise ConfigError("Give the secret as exactly one of string_value or bytes_value.")
            if self._ring is None:
                raise ConfigError(
                    "Secrets are stored encrypted under the home's key, and none is configured: set"
                    " AIFUNCS_ENCRYPTION_KEY (or AIFUNCS_ENCRYPTION_KEY_FILE) in the server's environment"
                    " (aifuncs keys generate makes one)."
                )
            raw = bytes_value if bytes_value is not None else str(string_value).encode()
            sealed = self._ring.seal(raw, _aad(scope, key))
        with self._db() as db:
            db.execute(
                "INSERT INTO secret_values (scope, key, sealed, env, updated_at) VALUES (?, ?, ?, ?, ?)"
                " ON CONFLICT (scope, key) DO UPDATE SET sealed = excluded.sealed, env = excluded.env,"
                " updated_at = excluded.updated_at",
                (scope, key, sealed, env, _now_ms()),
            )
        self._note("secrets.put", scope, key=key, **({"environment_variable": env} if env else {}))

    def delete(self, scope: str, key: str) -> None:
        self._require(scope, "WRITE", f"delete the key {key!r}")
        with self._db() as db:
            gone = db.execute("DELETE FROM secret_values WHERE scope = ? AND key = ?", (scope, key)).rowcount
        if not gone:
            raise UnknownSecret(f"The secret scope {scope!r} has no key {key!r}.")
        self._note("secrets.delete", scope, key=key)

    def list(self, scope: str) -> builtins.list[dict[str, Any]]:
        """The scope's keys and when each was last set: never their values."""
        self._require(scope, "READ", "list the keys")
        with self._db() as db:
            rows = db.execute(
                "SELECT key, updated_at FROM secret_values WHERE scope = ? ORDER BY key", (scope,)
            ).fetchall()
        return [{"key": r[0], "last_updated_timestamp": r[1]} for r in rows]

    def get(self, scope: str, key: str) -> bytes:
        """A value, for a READ holder (Databricks' `get`)."""
        self._require(scope, "READ", f"read the key {key!r}")
        return self._value(scope, key)

    def check_reference(self, reference: SecretReference) -> None:
        """That the actor may reference `reference` from an endpoint config: the scope exists, it holds READ
        there, the key exists. Each problem is named."""
        self._require(reference.scope, "READ", f"reference the key {reference.key!r}")
        self._row(reference.scope, reference.key)

    def resolve(self, reference: SecretReference) -> str:
        """The value behind a reference, for the request being sent (checked when the config was saved)."""
        return self._value(reference.scope, reference.key).decode("utf-8", "replace")

    def _row(self, scope: str, key: str) -> tuple[bytes | None, str | None]:
        with self._db() as db:
            row = db.execute(
                "SELECT sealed, env FROM secret_values WHERE scope = ? AND key = ?", (scope, key)
            ).fetchone()
        if row is None:
            raise UnknownSecret(
                f"The secret scope {scope!r} has no key {key!r} (aifuncs secrets list {scope})."
            )
        return (None if row[0] is None else bytes(row[0])), row[1]

    def _value(self, scope: str, key: str) -> bytes:
        sealed, env = self._row(scope, key)
        if env is not None:
            value = os.environ.get(check_env_name(env))
            if not value:
                raise UnknownSecret(
                    f"The secret {scope}/{key} is bound to the environment variable {env}, which is not set in"
                    " this process: set it where the server (or query) runs."
                )
            return value.encode()
        if self._ring is None or sealed is None:
            raise ConfigError(
                f"The secret {scope}/{key} is stored encrypted and no key is configured here: set"
                " AIFUNCS_ENCRYPTION_KEY (or _FILE) to the home's key."
            )
        return self._ring.open(sealed, _aad(scope, key))

    # ACLs

    def put_acl(self, scope: str, principal: str, permission: str) -> None:
        self._require(scope, "MANAGE", "change the ACLs")
        level = str(permission).upper()
        if level not in SECRET_LEVELS:
            raise ConfigError(f"A secret permission is {', '.join(SECRET_LEVELS)}, not {permission!r}.")
        if principal != EVERYONE:
            self._principals.get(principal)  # UnknownPrincipal names it
        with self._db() as db:
            db.execute(
                "INSERT INTO secret_acls (scope, principal, permission, granted_at) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (scope, principal) DO UPDATE SET permission = excluded.permission,"
                " granted_at = excluded.granted_at",
                (scope, principal, level, _now_ms()),
            )
        self._note("secrets.put-acl", scope, principal=principal, permission=level)

    def delete_acl(self, scope: str, principal: str) -> None:
        self._require(scope, "MANAGE", "change the ACLs")
        with self._db() as db:
            gone = db.execute(
                "DELETE FROM secret_acls WHERE scope = ? AND principal = ?", (scope, principal)
            ).rowcount
        if not gone:
            raise UnknownSecret(f"The secret scope {scope!r} has no ACL for {principal!r}.")
        self._note("secrets.delete-acl", scope, principal=principal)

    def list_acls(self, scope: str) -> builtins.list[dict[str, str]]:
        self._require(scope, "MANAGE", "read the ACLs")
        with self._db() as db:
            rows = db.execute(
                "SELECT principal, permission FROM secret_acls WHERE scope = ? ORDER BY principal", (scope,)
            ).fetchall()
        return [{"principal": r[0], "permission": r[1]} for r in rows]

    def get_acl(self, scope: str, principal: str) -> dict[str, str]:
        found = [a for a in self.list_acls(scope) if a["principal"] == principal]
        if not found:
            raise UnknownSecret(f"The secret scope {scope!r} has no ACL for {principal!r}.")
        return found[0]


_RESOLVER = Principal(
    "aifuncs", "service_principal"
)  # resolving checks nothing: the saved config was checked


def resolve(path: Path, ring: KeyRing | None, reference: SecretReference) -> str:
    """The value behind `reference` for a request being sent (READ was checked when the config was saved)."""
    return Secrets(path, _RESOLVER, ring).resolve(reference)


def _now_ms() -> int:
    return int(time.time() * 1000)


def _add_granted_at(db: Connection) -> None:
    """Give a table made before grants were timed its column (once per file; the shared database has it)."""
    if not isinstance(db, sqlite3.Connection):
        return
    columns = [r[1] for r in db.execute("PRAGMA table_info(secret_acls)")]
    if "granted_at" not in columns:
        with contextlib.suppress(sqlite3.OperationalError):  # another process added it first
            db.execute(_GRANTED_AT)


def _current(granted_at: int | None, created_at: str | None) -> bool:
    """Whether a grant was made to the principal that holds its name now (not to a deleted predecessor)."""
    if created_at is None:
        return False  # nobody holds the name: a row its principal's deletion left behind
    if granted_at is None:
        return True  # granted before grants were timed
    return granted_at >= int(datetime.fromisoformat(created_at).timestamp() * 1000)
