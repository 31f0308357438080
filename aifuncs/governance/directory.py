"""Principals and tokens, changed as someone: admins manage everyone; anyone lists and manages its own tokens.

    directory = Directory(home / "catalog.db", actor)
    directory.create_user("alice")
    secret, token = directory.create_token("alice", days=30)   # the secret is shown this once

The CLI (`aifuncs users|groups|service-principals|tokens`) and the Python API (`aifuncs.governance`) both
come here, and so will the server's SCIM-like routes: one place decides who may change the directory.
"""

from __future__ import annotations

import builtins
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from aifuncs.errors import ConfigError, PermissionDenied
from aifuncs.governance.audit import AuditLog
from aifuncs.governance.principals import Principal, PrincipalStore, owner_of
from aifuncs.governance.tokens import DEFAULT_DAYS, OWNER, Token, TokenStore

__all__ = ["Directory"]


class Directory:
    def __init__(self, path: Path, actor: Principal) -> None:
        self.path = path
        self.actor = actor
        self.principals = PrincipalStore(path)
        self.tokens = TokenStore(path)
        self.audit = AuditLog(path)

    def _note(self, action: str, target: str, **details: Any) -> None:
        self.audit.record(self.actor.name, action, target, details)

    def __repr__(self) -> str:
        return f"Directory({str(self.path)!r}, actor={self.actor.name!r})"

    def _admin(self, doing: str) -> None:
        if not self.actor.admin:
            raise PermissionDenied(
                f"{self.actor.name!r} may not {doing}: only an admin manages users, groups and service principals."
                " Ask one (the OS account that owns AIFUNCS_HOME is one)."
            )

    def _not_the_owner(self, name: str) -> None:
        if name == owner_of(self.path.parent):
            raise ConfigError(
                f"{name!r} is the OS account that owns AIFUNCS_HOME, an admin of it already; a stored principal of"
                " the same name would be mistaken for it. Choose another name."
            )

    def create_user(self, name: str, *, admin: bool = False) -> Principal:
        self._admin(f"create the user {name!r}")
        self._not_the_owner(name)
        created = self.principals.create(name, kind="user", admin=admin)
        self._note("users.create", name, admin=admin)
        return created

    def create_service_principal(self, name: str, *, admin: bool = False) -> Principal:
        self._admin(f"create the service principal {name!r}")
        self._not_the_owner(name)
        created = self.principals.create(name, kind="service_principal", admin=admin)
        self._note("service-principals.create", name, admin=admin)
        return created

    def create_group(self, name: str, *, members: Iterable[str] = ()) -> Principal:
        self._admin(f"create the group {name!r}")
        self._not_the_owner(name)
        group = self.principals.create(name, kind="group")
        self._note("groups.create", name)
        for member in members:
            self.add_member(name, member)
        return group

    def delete(self, name: str) -> None:
        """Remove a principal: its memberships, grants and tokens go with it."""
        self._admin(f"delete {name!r}")
        kind = self.principals.get(name).kind
        self.principals.delete(name)
        revoked = self.tokens.revoke_all(name)  # a principal made later under this name inherits none of them
        self._note("principals.delete", name, kind=kind, tokens_revoked=revoked)

    def add_member(self, group: str, member: str) -> None:
        self._admin(f"change the members of {group!r}")
        self.principals.add_member(group, member)
        self._note("groups.add-member", group, member=member)

    def remove_member(self, group: str, member: str) -> None:
        self._admin(f"change the members of {group!r}")
        self.principals.remove_member(group, member)
        self._note("groups.remove-member", group, member=member)

    def grant_entitlement(self, name: str, entitlement: str) -> None:
        """Let a user, service principal or group (its members) do what `entitlement` names, e.g. create
        endpoints ("allow-endpoint-create")."""
        self._admin(f"grant {entitlement!r} to {name!r}")
        self.principals.grant_entitlement(name, entitlement)
        self._note("entitlements.grant", name, entitlement=entitlement)

    def revoke_entitlement(self, name: str, entitlement: str) -> None:
        self._admin(f"revoke {entitlement!r} from {name!r}")
        self.principals.revoke_entitlement(name, entitlement)
        self._note("entitlements.revoke", name, entitlement=entitlement)

    def entitlements(self, name: str) -> builtins.list[str]:
        return self.principals.entitlements(name)

    def members(self, group: str) -> builtins.list[str]:
        return self.principals.members(group)

    def get(self, name: str) -> Principal:
        return self.principals.get(name)

    def list(self, kind: str | None = None) -> builtins.list[Principal]:
        return self.principals.list(kind)

    def groups_of(self, name: str) -> set[str]:
        return self.principals.groups_of(name)

    def create_token(
        self, principal: str | None = None, *, days: int | None = DEFAULT_DAYS, comment: str = ""
    ) -> tuple[str, Token]:
        """A token for `principal` (default: the actor itself): an admin's for anyone, anyone's for itself.
        Returns the secret, shown this once, and its record."""
        name = principal or self.actor.name
        if self.actor.implicit and name == self.actor.name:
            # The home's owner, for itself (a REST client or a browser on its own machine): only the owner
            # makes these; no stored principal can be named so (`_not_the_owner`), nor given one by an admin.
            kind = OWNER
        else:
            if name != self.actor.name:
                self._admin(f"make a token for {name!r}")
            if name == owner_of(self.path.parent):
                raise PermissionDenied(
                    f"Only {name!r} itself makes tokens for the OS account that owns AIFUNCS_HOME."
                )
            target = self.principals.get(name)
            if target.kind == "group":
                raise ConfigError(f"{name!r} is a group; tokens belong to users and service principals.")
            kind = target.kind
        secret, token = self.tokens.create(name, kind=kind, days=days, comment=comment)
        self._note(
            "tokens.create", name, token_id=token.id, display=token.display, expires_at=token.expires_at
        )
        return secret, token

    def list_tokens(self, principal: str | None = None) -> builtins.list[Token]:
        """Tokens (never their secrets): an admin sees everyone's, others their own."""
        if self.actor.admin:
            return self.tokens.list(principal)
        if principal not in (None, self.actor.name):
            raise PermissionDenied(f"{self.actor.name!r} may list only its own tokens.")
        return self.tokens.list(self.actor.name)

    def revoke_token(self, token_id: int) -> None:
        """Revoke a token: an admin any, others their own (someone else's reads as one that does not exist)."""
        owned = {t.id for t in self.tokens.list(None if self.actor.admin else self.actor.name)}
        if token_id not in owned:
            raise ConfigError(f"There is no token {token_id} of yours (aifuncs tokens list).")
        self.tokens.revoke(token_id)
        self._note("tokens.revoke", f"token {token_id}", token_id=token_id)
