"""The catalog of endpoints: every model a team uses, under one name each.

    import aifuncs
    aifuncs.endpoints.create("wine", kind="mlflow", model_uri="models:/wine/1")
    aifuncs.endpoints.list()

Stored in SQLite under AIFUNCS_HOME, so every process on the machine sees the same endpoints. Each
update bumps the endpoint's version. Secrets are never stored: an endpoint names the secret scope's key
(or, set by an admin, the environment variable) that holds its key.

Every method acts as a principal (the process's own unless `acting_as` says another) and asks the one
policy check: get and list need CAN_VIEW, update, delete and permissions CAN_MANAGE. An endpoint one may
not view reads exactly as one that does not exist. Creating one needs the allow-endpoint-create entitlement
(admins hold it), and what a config may reach depends on its author (`_authoring.py`). The creator's CAN_MANAGE is written in the transaction
that creates the endpoint; a deleted endpoint's grants go in the transaction that deletes it.
"""

from __future__ import annotations

import builtins
import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from aifuncs._endpoint import Endpoint, ServedEntity, check_name, check_no_secrets
from aifuncs._home import home_file
from aifuncs.catalog._authoring import authored, settle_unrecorded
from aifuncs.catalog._defaults import BUILTIN_DEFAULTS, ROLES, DefaultsMethods, reserved_role
from aifuncs.catalog._entities import checked_entities
from aifuncs.catalog._gateway import GATEWAY_FIELDS, GatewayMethods, GatewaySettings
from aifuncs.catalog._permissions import PermissionMethods
from aifuncs.catalog._staging import IN_PROGRESS, UPDATE_FAILED, Staged, StagingMethods
from aifuncs.catalog._store import SqliteStore
from aifuncs.errors import ConfigError, EndpointExists, PermissionDenied, UnknownEndpoint
from aifuncs.governance import Principal, current, policy
from aifuncs.governance.audit import AuditLog
from aifuncs.governance.payloads import record_refusal
from aifuncs.governance.permissions import PermissionStore
from aifuncs.governance.principals import CREATE_ENDPOINTS
from aifuncs.providers import provider_class

__all__ = [
    "BUILTIN_DEFAULTS",
    "GATEWAY_FIELDS",
    "ROLES",
    "Catalog",
    "Endpoint",
    "GatewaySettings",
    "IN_PROGRESS",
    "UPDATE_FAILED",
    "ServedEntity",
    "Staged",
    "create",
    "default",
    "default_catalog",
    "delete",
    "get",
    "get_ai_gateway",
    "get_permissions",
    "list",
    "put_ai_gateway",
    "reserved_role",
    "set_default",
    "set_permissions",
    "set_rate_limits",
    "update",
    "update_permissions",
    "versions",
]


def _validate(name: str, kind: str, options: dict[str, Any]) -> dict[str, Any]:
    check_no_secrets(options)
    options_model = provider_class(kind).Options
    try:
        options_model.model_validate(options)
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'options'}: {e['msg']}" for e in error.errors()
        )
        accepted = ", ".join(options_model.model_fields)
        raise ConfigError(
            f"Invalid options for {kind} endpoint {name!r}: {problems}. Accepted options: {accepted}."
        ) from None
    return {k: v for k, v in options.items() if v is not None}


class Catalog(PermissionMethods, GatewayMethods, DefaultsMethods, StagingMethods):
    """Endpoints stored in one SQLite file, seen as one principal; its permission, AI gateway and defaults
    methods live in `_permissions.py`, `_gateway.py` and `_defaults.py`."""

    def __init__(self, path: Path | str, principal: Principal | None = None) -> None:
        self.path = Path(path)
        self._store = SqliteStore(self.path)
        self._permissions = PermissionStore(self.path)
        self._permissions.ensure_schema()
        self._audit = AuditLog(self.path)
        self._principal = principal
        settle_unrecorded(self.path)  # remote configs stored before their author was recorded

    def acting_as(self, principal: Principal) -> Catalog:
        """The same catalog, seen and changed as `principal` (a server's request, a connection's owner)."""
        view = Catalog.__new__(Catalog)
        view.path, view._store, view._permissions, view._audit, view._principal = (
            self.path, self._store, self._permissions, self._audit, principal
        )  # fmt: skip
        return view

    @property
    def principal(self) -> Principal:
        return self._principal if self._principal is not None else current().principal

    def authorize(self, name: str, action: str = "view") -> Endpoint:
        """The endpoint `name`, when the principal may `action` it ("view", "query", "manage"); else
        UnknownEndpoint (no such endpoint, or one it may not view) or PermissionDenied."""
        endpoint = self._store.get(name)
        if endpoint is None:
            builtin = next((b for b in BUILTIN_DEFAULTS.items() if b[1][0] == name), None)
            if builtin is not None:  # a built-in offline model, asked for by name before first use
                endpoint = self._builtin(*builtin)
        principal = self.principal
        if principal.admin:  # CAN_MANAGE everywhere: no lookup
            if endpoint is None:
                raise UnknownEndpoint(name, self._store.names())
            return endpoint
        if action == "manage" and endpoint is not None and reserved_role(endpoint.name):
            self._refuse_reserved(endpoint.name, "change")
        try:
            policy.authorize(
                self._permissions,
                principal,
                endpoint.name if endpoint else name,
                action,
                known=self._store.names(),
            )
        except (PermissionDenied, UnknownEndpoint):
            if endpoint is not None and action == "query" and (table := self.inference_table(endpoint)):
                record_refusal(self.path.parent / "payloads.db", table, endpoint.name, principal.name, 403)
            raise
        assert endpoint is not None  # authorize refuses a name the catalog does not know
        return endpoint

    def create(
        self,
        name: str,
        kind: str | None = None,
        *,
        description: str = "",
        served_entities: Sequence[ServedEntity | dict[str, Any]] | None = None,
        **options: Any,
    ) -> Endpoint:
        """Add an endpoint of one model (`kind` and its options), or of several (`served_entities`, each with
        its share of the traffic)."""
        check_name(name)
        if reserved_role(name) and not self.principal.admin:
            self._refuse_reserved(name, "create")
        principal = self.principal
        self._may_create(principal, name)
        endpoint = self._configured(name, kind, options, served_entities, description)
        if not self._store.insert(endpoint, also=self._creator_grant(name, principal)):
            if not principal.admin and not policy.viewable(self._permissions, principal, [name]):
                # taken by an endpoint this principal may not see: say so without saying what it is
                raise EndpointExists(f"The name {name!r} is taken; choose another.")
            raise EndpointExists(f"Endpoint {name!r} already exists; use update() to change it.")
        self._note("endpoints.create", name, kind=endpoint.kind, options=endpoint.stored_options())
        return self.get(name)

    def _configured(
        self,
        name: str,
        kind: str | None,
        options: dict[str, Any],
        served_entities: Sequence[ServedEntity | dict[str, Any]] | None,
        description: str,
    ) -> Endpoint:
        """The endpoint a config describes, checked and authored by this principal (nothing stored yet)."""
        if served_entities is None:
            if kind is None:
                raise ConfigError(
                    f"Give the endpoint {name!r} a kind (e.g. openai, mlflow) or served_entities."
                )
            checked = authored(self.path, self.principal, kind, _validate(name, kind, options))
            return Endpoint(name, kind, checked, description)
        if kind is not None or options:
            raise ConfigError(
                f"Give the endpoint {name!r} either a kind with options or served_entities, not both: each"
                " served entity carries its own kind and options."
            )

        def check(label: str, entity_kind: str, entity_options: dict[str, Any]) -> dict[str, Any]:
            return authored(
                self.path, self.principal, entity_kind, _validate(label, entity_kind, entity_options)
            )

        entities = checked_entities(name, served_entities, check)
        first = entities[0]
        return Endpoint(name, first.kind, first.options, description, entities=entities)

    def _may_create(self, principal: Principal, name: str) -> None:
        if not self._permissions.principals.entitled(principal, CREATE_ENDPOINTS):
            raise PermissionDenied(
                f"{principal.name!r} may not create the endpoint {name!r}: creating endpoints needs the"
                f" {CREATE_ENDPOINTS!r} entitlement, which an admin grants"
                f" (aifuncs users entitle {principal.name} {CREATE_ENDPOINTS})."
            )

    def _note(self, action: str, target: str, **details: Any) -> None:
        self._audit.record(self.principal.name, action, target, details)

    def _creator_grant(self, name: str, principal: Principal) -> Any:
        if principal.implicit:  # the home's owner is an admin: CAN_MANAGE everywhere already
            return None
        return lambda db: self._permissions.grant_creator(db, name, principal.name)

    def get(self, name: str) -> Endpoint:
        return self.authorize(name, "view")

    def revision(self) -> int:
        """The count of governance changes (endpoints, gateway settings, permissions, defaults), read at most
        once a second: part of the key of whatever a process keeps of a binding."""
        return self._store.revision()

    def known_revision(self) -> int | None:
        """`revision()` when it needs no read (under a second old), else None."""
        return self._store.known_revision()

    def list(self) -> builtins.list[Endpoint]:
        endpoints = self._store.list()
        principal = self.principal
        if principal.admin:
            return endpoints
        allowed = set(policy.viewable(self._permissions, principal, [e.name for e in endpoints]))
        return [e for e in endpoints if e.name in allowed]

    def names(self) -> builtins.list[str]:
        names = self._store.names()
        principal = self.principal
        return names if principal.admin else policy.viewable(self._permissions, principal, names)

    def update(
        self,
        name: str,
        *,
        description: str | None = None,
        replace: bool = False,
        served_entities: Sequence[ServedEntity | dict[str, Any]] | None = None,
        **options: Any,
    ) -> Endpoint:
        """Change options (merged into the current ones unless `replace`; None removes one), or replace the
        served entities (`served_entities`: the whole new list). Bumps the version; every version is kept."""
        current_endpoint = self.authorize(name, "manage")
        updated = self._updated(current_endpoint, description, replace, served_entities, options)
        result = self._store.replace(updated)
        if result is None:  # deleted by another process in between
            raise UnknownEndpoint(name, self.names())
        self._note("endpoints.update", result.name, version=result.version, options=updated.stored_options())
        return result

    def _updated(
        self,
        current: Endpoint,
        description: str | None,
        replace: bool,
        served_entities: Sequence[ServedEntity | dict[str, Any]] | None,
        options: dict[str, Any],
    ) -> Endpoint:
        """What an update makes of `current` (checked and authored; nothing stored)."""
        described = current.description if description is None else description
        if served_entities is not None:
            return self._configured(current.name, None, options, served_entities, described)
        if current.entities:
            if options:
                raise ConfigError(
                    f"{current.name!r} serves {len(current.entities)} entities: change their options by giving"
                    " served_entities (the whole new list)."
                )
            return dataclasses.replace(current, description=described)
        merged = dict(options) if replace else {**current.options, **options}
        merged = authored(
            self.path, self.principal, current.kind, _validate(current.name, current.kind, merged)
        )
        return Endpoint(current.name, current.kind, merged, described)

    def delete(self, name: str) -> None:
        endpoint = self.authorize(name, "manage")
        if not self._store.delete(
            endpoint.name, also=lambda db: PermissionStore.revoke_all(db, endpoint.name)
        ):
            raise UnknownEndpoint(name, self.names())
        self._note("endpoints.delete", endpoint.name)

    def versions(self, name: str) -> builtins.list[dict[str, Any]]:
        endpoint = self.authorize(name, "view")
        return self._store.versions(endpoint.name)

    def tags(self, name: str) -> builtins.list[dict[str, Any]]:
        """The endpoint's tags, [{"key", "value"}] (needs CAN_VIEW)."""
        return self._store.tags(self.authorize(name, "view").name)

    def patch_tags(
        self,
        name: str,
        add_tags: builtins.list[dict[str, Any]] | None = None,
        delete_tags: builtins.list[str] | None = None,
    ) -> builtins.list[dict[str, Any]]:
        """Add or change tags and delete others (Databricks' PATCH .../tags; needs CAN_MANAGE)."""
        endpoint = self.authorize(name, "manage")
        add: dict[str, str | None] = {}
        for tag in add_tags or []:
            if not isinstance(tag, dict) or not isinstance(tag.get("key"), str) or not tag["key"]:
                raise ConfigError('Each tag to add is {"key": "...", "value": "..."}.')
            value = tag.get("value")
            add[tag["key"]] = None if value is None else str(value)
        if not all(isinstance(k, str) for k in delete_tags or []):
            raise ConfigError("delete_tags is a list of tag keys.")
        if not self._store.patch_tags(endpoint.name, add, builtins.list(delete_tags or [])):
            raise UnknownEndpoint(name, self.names())
        self._note("tags.patch", endpoint.name, add=add, delete=builtins.list(delete_tags or []))
        return self._store.tags(endpoint.name)


_catalogs: dict[Path, Catalog] = {}


def default_catalog() -> Catalog:
    """The catalog of the current AIFUNCS_HOME (looked up on each call, so a changed home is honoured)."""
    path = home_file("catalog.db")
    if path not in _catalogs or not path.exists():
        _catalogs[path] = Catalog(path)
    return _catalogs[path]


def create(
    name: str,
    kind: str | None = None,
    *,
    description: str = "",
    served_entities: Sequence[ServedEntity | dict[str, Any]] | None = None,
    **options: Any,
) -> Endpoint:
    """Register a model under `name`. `kind` is a provider (`python`, `mlflow`, ...); options are its settings.
    Or several models: `served_entities=[ServedEntity("prod", "mlflow", {...}, 90), ...]`, traffic split by
    the percentages."""
    return default_catalog().create(
        name, kind, description=description, served_entities=served_entities, **options
    )


def get(name: str) -> Endpoint:
    return default_catalog().get(name)


def list() -> builtins.list[Endpoint]:  # noqa: A001 - mirrors the CLI verb
    return default_catalog().list()


def update(
    name: str,
    *,
    description: str | None = None,
    replace: bool = False,
    served_entities: Sequence[ServedEntity | dict[str, Any]] | None = None,
    **options: Any,
) -> Endpoint:
    return default_catalog().update(
        name, description=description, replace=replace, served_entities=served_entities, **options
    )


def delete(name: str) -> None:
    default_catalog().delete(name)


def versions(name: str) -> builtins.list[dict[str, Any]]:
    return default_catalog().versions(name)


def get_permissions(name: str) -> dict[str, Any]:
    """The endpoint's `access_control_list` (needs CAN_MANAGE)."""
    return default_catalog().get_permissions(name)


def set_permissions(name: str, access_control_list: builtins.list[dict[str, Any]]) -> dict[str, Any]:
    """Replace the endpoint's grants, e.g. [{"user_name": "alice", "permission_level": "CAN_QUERY"}]."""
    return default_catalog().set_permissions(name, access_control_list)


def update_permissions(name: str, access_control_list: builtins.list[dict[str, Any]]) -> dict[str, Any]:
    """Add or change grants of the endpoint, keeping the others."""
    return default_catalog().update_permissions(name, access_control_list)


def get_ai_gateway(name: str) -> dict[str, Any]:
    return default_catalog().get_ai_gateway(name)


def put_ai_gateway(name: str, config: dict[str, Any]) -> dict[str, Any]:
    """Replace the endpoint's AI gateway configuration, e.g. {"rate_limits": [{"calls": 600, "key": "endpoint"}]}."""
    return default_catalog().put_ai_gateway(name, config)


def set_rate_limits(name: str, rate_limits: builtins.list[dict[str, Any]]) -> builtins.list[dict[str, Any]]:
    """Replace the endpoint's rate limits: [{"calls": 100, "key": "user"}, {"tokens": 5000, "key": "user_group",
    "principal": "analysts"}, ...]; [] removes them."""
    return default_catalog().set_rate_limits(name, rate_limits)


def set_default(role: str, name: str | None) -> None:
    """The endpoint task functions (ai_classify, ai_summarize...) use for `role`: "chat" or "embedding"."""
    default_catalog().set_default(role, name)


def default(role: str) -> Endpoint:
    return default_catalog().default(role)
