"""Governance: who is who, and who may call which endpoint.

    import aifuncs.governance as gov
    gov.create_user("alice")
    secret = gov.create_token("alice", days=30)       # shown once; alice sets AIFUNCS_TOKEN to it
    aifuncs.endpoints.update_permissions("churn", [{"user_name": "alice", "permission_level": "CAN_QUERY"}])

Principals (`principals.py`), their tokens (`tokens.py`), who a process acts as (`identity.py`), endpoint
permissions (`permissions.py`), the one policy check (`policy.py`), rate limits (`limits.py`) and the audit log
of every change (`audit.py`), all in the catalog's SQLite file (the limiter's buckets in `limits.db`), or all in
the one PostgreSQL database AIFUNCS_DATABASE_URL names, buckets included (aifuncs/storage).
The functions here act as the process's identity (`AIFUNCS_TOKEN`, else the OS account owning AIFUNCS_HOME,
an admin of it); `Directory` changes principals and tokens as any identity (a server's request).
"""

from __future__ import annotations

from collections.abc import Iterable

from aifuncs._home import home
from aifuncs.errors import ConfigError, PermissionDenied
from aifuncs.governance import policy
from aifuncs.governance.audit import AuditEntry, AuditLog
from aifuncs.governance.directory import Directory
from aifuncs.governance.identity import Identity, current, identify
from aifuncs.governance.keys import EncryptionError, fingerprint, generate_key, keyring
from aifuncs.governance.permissions import LEVELS, PermissionStore, level_allows
from aifuncs.governance.principals import (
    CREATE_ENDPOINTS,
    CREATE_SECRET_SCOPES,
    Principal,
    PrincipalStore,
    UnknownPrincipal,
    acting_as,
    owner_of,
)
from aifuncs.governance.tokens import DEFAULT_DAYS, InvalidToken, Token, TokenStore, check_format

__all__ = [
    "CREATE_ENDPOINTS",
    "CREATE_SECRET_SCOPES",
    "LEVELS",
    "AuditEntry",
    "AuditLog",
    "EncryptionError",
    "audit_log",
    "generate_key",
    "grant_entitlement",
    "revoke_entitlement",
    "keyring",
    "rotate_key",
    "verify_audit",
    "Directory",
    "Identity",
    "InvalidToken",
    "PermissionStore",
    "Principal",
    "PrincipalStore",
    "Token",
    "TokenStore",
    "UnknownPrincipal",
    "acting_as",
    "add_member",
    "check_format",
    "create_group",
    "create_service_principal",
    "create_token",
    "create_user",
    "current",
    "delete_principal",
    "directory",
    "identify",
    "level_allows",
    "list_principals",
    "list_tokens",
    "owner_of",
    "policy",
    "remove_member",
    "revoke_token",
    "whoami",
]


def audit_log(actor: str | None = None) -> list[AuditEntry]:
    """The audit log's entries: an admin reads all (or `actor`'s), anyone else only its own."""
    me = current().principal
    log = AuditLog(home() / "catalog.db")
    return log.entries(actor if me.admin else me.name)


def verify_audit() -> int | None:
    """The first audit entry that breaks the hash chain (changed or removed), None when the log is intact."""
    return AuditLog(home() / "catalog.db").verify()


def rotate_key(new_key: bytes) -> int:
    """Rewrap this home's data keys from the configured key-encryption key to `new_key` (admins). Returns how
    many; afterwards only `new_key` opens what is stored. No row is rewritten."""
    me = current().principal
    if not me.admin:
        raise PermissionDenied(f"{me.name!r} may not rotate the encryption key: only an admin does.")
    ring = keyring()
    if ring is None:
        raise ConfigError(
            "No encryption key is configured to rotate from: set AIFUNCS_ENCRYPTION_KEY (or _FILE) to the current key."
        )
    old = ring.fingerprint
    count = ring.rotate(new_key)
    AuditLog(home() / "catalog.db").record(me.name, "keys.rotate", "keys.db",
                                           {"from": old, "to": fingerprint(new_key), "data_keys": count})  # fmt: skip
    return count


def directory() -> Directory:
    """The directory of the current AIFUNCS_HOME, changed as this process's identity."""
    return Directory(home() / "catalog.db", current().principal)


def whoami() -> Principal:
    return current().principal


def create_user(name: str, *, admin: bool = False) -> Principal:
    return directory().create_user(name, admin=admin)


def create_service_principal(name: str, *, admin: bool = False) -> Principal:
    return directory().create_service_principal(name, admin=admin)


def create_group(name: str, *, members: Iterable[str] = ()) -> Principal:
    return directory().create_group(name, members=members)


def delete_principal(name: str) -> None:
    directory().delete(name)


def add_member(group: str, member: str) -> None:
    directory().add_member(group, member)


def remove_member(group: str, member: str) -> None:
    directory().remove_member(group, member)


def grant_entitlement(name: str, entitlement: str = CREATE_ENDPOINTS) -> None:
    """Let `name` (a user, service principal or group) create endpoints, or what `entitlement` names (admins)."""
    directory().grant_entitlement(name, entitlement)


def revoke_entitlement(name: str, entitlement: str = CREATE_ENDPOINTS) -> None:
    directory().revoke_entitlement(name, entitlement)


def list_principals(kind: str | None = None) -> list[Principal]:
    return directory().list(kind)


def create_token(principal: str | None = None, *, days: int | None = DEFAULT_DAYS, comment: str = "") -> str:
    """A new token for `principal` (default: yourself); the secret is returned this once, stored only hashed."""
    secret, _ = directory().create_token(principal, days=days, comment=comment)
    return secret


def list_tokens(principal: str | None = None) -> list[Token]:
    return directory().list_tokens(principal)


def revoke_token(token_id: int) -> None:
    directory().revoke_token(token_id)
