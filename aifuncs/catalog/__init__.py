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
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from aifuncs._endpoint import Endpoint, check_name, check_no_secrets
from aifuncs._home import home_file
from aifuncs.catalog._authoring import authored, settle_unrecorded
from aifuncs.catalog._store import SqliteStore
from aifuncs.errors import ConfigError, EndpointExists, PermissionDenied, UnknownEndpoint
from aifuncs.governance import Principal, current, policy
from aifuncs.governance.audit import AuditLog
from aifuncs.governance.guardrails import Guardrails, parse_guardrails
from aifuncs.governance.limits import Check, applicable, parse_limits
from aifuncs.governance.payloads import InferenceTable, parse_inference_table, record_refusal
from aifuncs.governance.permissions import PermissionStore
from aifuncs.governance.principals import CREATE_ENDPOINTS
from aifuncs.providers import provider_class

__all__ = [
    "Catalog",
    "Endpoint",
    "create",
    "default",
    "default_catalog",
    "delete",
    "get",
    "get_ai_gateway",
    "get_permissions",
    "list",
    "put_ai_gateway",
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


class Catalog:
    """Endpoints stored in one SQLite file, seen as one principal."""

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

    def create(self, name: str, kind: str, *, description: str = "", **options: Any) -> Endpoint:
        check_name(name)
        if reserved_role(name) and not self.principal.admin:
            self._refuse_reserved(name, "create")
        principal = self.principal
        self._may_create(principal, name)
        checked = authored(self.path, principal, kind, _validate(name, kind, options))
        endpoint = Endpoint(name, kind, checked, description)
        if not self._store.insert(endpoint, also=self._creator_grant(name, principal)):
            if not principal.admin and not policy.viewable(self._permissions, principal, [name]):
                # taken by an endpoint this principal may not see: say so without saying what it is
                raise EndpointExists(f"The name {name!r} is taken; choose another.")
            raise EndpointExists(f"Endpoint {name!r} already exists; use update() to change it.")
        self._note("endpoints.create", name, kind=kind, options=endpoint.options)
        return self.get(name)

    def _refuse_reserved(self, name: str, doing: str) -> None:
        raise PermissionDenied(
            f"{self.principal.name!r} may not {doing} {name!r}: the name belongs to the built-in default"
            f" {reserved_role(name)} model, which serves everyone's text, so only an admin creates or changes it."
            " Choose another name."
        )

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

    def permission_level(self, name: str) -> str | None:
        """The level the principal holds on the endpoint `name` (its canonical name), None for none."""
        principal = self.principal
        return "CAN_MANAGE" if principal.admin else self._permissions.effective(name, principal)

    def managed(self) -> dict[str, datetime | None]:
        """The endpoints the principal may manage, each with when it was made (rows logged before belong to
        an earlier endpoint of that name)."""
        principal = self.principal
        return {
            e.name: e.created_at
            for e in self._store.list()
            if principal.admin or self._permissions.effective(e.name, principal) == "CAN_MANAGE"
        }

    def managed_names(self) -> builtins.list[str]:
        """The endpoints the principal may manage."""
        names = self._store.names()
        principal = self.principal
        if principal.admin:
            return names
        return [n for n in names if self._permissions.effective(n, principal) == "CAN_MANAGE"]

    def update(
        self, name: str, *, description: str | None = None, replace: bool = False, **options: Any
    ) -> Endpoint:
        """Change options (merged into the current ones unless `replace`; None removes one). Bumps the version."""
        current_endpoint = self.authorize(name, "manage")
        merged = dict(options) if replace else {**current_endpoint.options, **options}
        merged = authored(
            self.path, self.principal, current_endpoint.kind, _validate(name, current_endpoint.kind, merged)
        )
        updated = Endpoint(
            current_endpoint.name,
            current_endpoint.kind,
            merged,
            current_endpoint.description if description is None else description,
        )
        result = self._store.replace(updated)
        if result is None:  # deleted by another process in between
            raise UnknownEndpoint(name, self.names())
        self._note("endpoints.update", result.name, version=result.version, options=merged)
        return result

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

    def get_permissions(self, name: str) -> dict[str, Any]:
        """Databricks' permissions object of an endpoint (`access_control_list` with where each level
        comes from); needs CAN_MANAGE."""
        endpoint = self.authorize(name, "manage")
        return {
            "object_id": f"/serving-endpoints/{endpoint.name}",
            "object_type": "serving-endpoint",
            "access_control_list": self._permissions.acl(endpoint.name),
        }

    def permission_rows(self) -> builtins.list[dict[str, Any]]:
        """Every grant as a row (endpoint, principal, principal_type, permission_level, inherited,
        inherited_from): all of those on endpoints the principal manages, its own on those it may view."""
        principal = self.principal
        rows = []
        for endpoint in self._store.list():
            held = "CAN_MANAGE" if principal.admin else self._permissions.effective(endpoint.name, principal)
            if held is None:
                continue
            for entry in self._permissions.acl(endpoint.name):
                name = entry["display_name"]
                if held != "CAN_MANAGE" and name != principal.name:
                    continue
                kind = next(k for k in ("user", "group", "service_principal") if f"{k}_name" in entry)
                for level in entry["all_permissions"]:
                    rows.append({"endpoint": endpoint.name, "principal": name, "principal_type": kind,
                                 "permission_level": level["permission_level"], "inherited": level["inherited"],
                                 "inherited_from": ", ".join(level.get("inherited_from_object", []))})  # fmt: skip
        return rows

    def set_permissions(
        self, name: str, access_control_list: builtins.list[dict[str, Any]]
    ) -> dict[str, Any]:
        """Replace the endpoint's grants (Databricks' PUT): all entries are checked before any is written."""
        endpoint = self.authorize(name, "manage")
        self._permissions.set_acl(endpoint.name, access_control_list)
        self._store.bump_revision()
        self._note("permissions.set", endpoint.name, access_control_list=access_control_list)
        return self.get_permissions(endpoint.name)

    def update_permissions(
        self, name: str, access_control_list: builtins.list[dict[str, Any]]
    ) -> dict[str, Any]:
        """Add or change grants, keeping the others (Databricks' PATCH)."""
        endpoint = self.authorize(name, "manage")
        self._permissions.update_acl(endpoint.name, access_control_list)
        self._store.bump_revision()
        self._note("permissions.update", endpoint.name, access_control_list=access_control_list)
        return self.get_permissions(endpoint.name)

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

    def get_ai_gateway(self, name: str) -> dict[str, Any]:
        """The endpoint's AI gateway configuration in Databricks' shape (`rate_limits` so far)."""
        endpoint = self.authorize(name, "view")
        return {"rate_limits": [], **self._store.gateway(endpoint.name)}

    def put_ai_gateway(self, name: str, config: dict[str, Any]) -> dict[str, Any]:
        """Replace the endpoint's AI gateway configuration (needs CAN_MANAGE); checked whole before it is stored."""
        endpoint = self.authorize(name, "manage")
        if not isinstance(config, dict):
            raise ConfigError('The AI gateway configuration is an object, e.g. {"rate_limits": [...]}.')
        unsupported = sorted(set(config) - set(GATEWAY_FIELDS))
        if unsupported:
            raise ConfigError(
                f"Unsupported AI gateway settings {unsupported}: this version takes {', '.join(GATEWAY_FIELDS)}."
            )
        limits = parse_limits(config.get("rate_limits", []), self._permissions.principals)
        stored: dict[str, Any] = {"rate_limits": [limit.to_dict() for limit in limits]}
        if config.get("guardrails"):
            rails = parse_guardrails(config["guardrails"])
            self._may_use_topic_endpoint(rails.input.topic_endpoint)
            stored["guardrails"] = rails.to_dict()
        if "inference_table_config" in config:
            stored["inference_table_config"] = parse_inference_table(
                config["inference_table_config"]
            ).to_dict()
        if not self._store.set_gateway(endpoint.name, stored):
            raise UnknownEndpoint(name, self.names())
        self._note("ai-gateway.put", endpoint.name, **stored)
        return self.get_ai_gateway(endpoint.name)

    def _may_use_topic_endpoint(self, name: str | None) -> None:
        """A guardrail's embedding endpoint runs on the endpoint's behalf for every caller: its author needs
        CAN_QUERY on it, and one it may not view reads as missing."""
        if name is None or self.principal.admin:
            return
        try:
            self.authorize(name, "query")
        except UnknownEndpoint:
            raise ConfigError(
                f"The guardrail's topic_endpoint {name!r} does not exist: make it, or change the guardrail."
            ) from None
        except PermissionDenied:
            raise PermissionDenied(
                f"{self.principal.name!r} may not use {name!r} as the guardrail's topic_endpoint: that needs"
                " CAN_QUERY on it. Someone with CAN_MANAGE on it can grant it."
            ) from None

    def set_rate_limits(
        self, name: str, rate_limits: builtins.list[dict[str, Any]]
    ) -> builtins.list[dict[str, Any]]:
        """Replace the endpoint's rate limits (Databricks' PUT .../rate-limits); [] removes them."""
        config = {**self.get_ai_gateway(name), "rate_limits": rate_limits}
        return builtins.list(self.put_ai_gateway(name, config)["rate_limits"])

    def inference_table(self, endpoint: Endpoint) -> InferenceTable | None:
        """The endpoint's inference table, when one is switched on."""
        return _inference_table(self._store.gateway(endpoint.name))

    def gateway_settings(self, endpoint: Endpoint) -> GatewaySettings:
        """What the endpoint's AI gateway asks of each request of the principal, read once: the rate-limit
        checks that hold for it, the inference table, the guardrails."""
        config = self._store.gateway(endpoint.name)
        rails = parse_guardrails(config["guardrails"]) if config.get("guardrails") else None
        return GatewaySettings(
            self._rate_checks(endpoint, config),
            _inference_table(config),
            rails if rails is not None and rails.active else None,
        )

    def for_guardrail(self, name: str | None) -> Endpoint:
        """The embedding endpoint a guardrail uses (`name`, else the default one), with no policy check: the
        endpoint's manager chose it, and it runs on the endpoint's behalf, not the caller's."""
        name = name or self._store.default("embedding") or BUILTIN_DEFAULTS["embedding"][0]
        endpoint = self._store.get(name)
        role = reserved_role(name)
        if endpoint is None or role is not None:  # a built-in name is followed only while admins hold it
            builtin = (role, BUILTIN_DEFAULTS[role]) if role is not None else None
            if builtin is None:
                raise ConfigError(
                    f"The guardrail's topic_endpoint {name!r} does not exist: make it, or change the guardrail."
                )
            endpoint = self._builtin(*builtin)
        return endpoint

    def _rate_checks(self, endpoint: Endpoint, config: dict[str, Any]) -> tuple[Check, ...]:
        limits = parse_limits(config.get("rate_limits", []))
        if not limits:
            return ()
        principal = self.principal
        groups = self._permissions.principals.groups_of(principal.name) if not principal.implicit else set()
        return applicable(endpoint.name, limits, principal, groups)

    def set_default(self, role: str, name: str | None) -> None:
        """Make `name` the endpoint task functions use for `role` ("chat" or "embedding"); None unsets it.
        The defaults serve everyone: only an admin sets them."""
        if role not in ROLES:
            raise ConfigError(f"Unknown default role {role!r}: use one of {', '.join(ROLES)}.")
        if not self.principal.admin:
            raise PermissionDenied(
                f"{self.principal.name!r} may not set the default {role} endpoint: the defaults serve everyone,"
                " so only an admin sets them."
            )
        if name is not None:
            name = self.get(name).name
        self._store.set_default(role, name)
        self._note("defaults.set", role, endpoint=name)

    def configured_default(self, role: str) -> str | None:
        """The endpoint set for a role, None while the built-in one stands in."""
        return self._store.default(role)

    def default(self, role: str) -> Endpoint:
        """The endpoint for a role: the one set, else the built-in offline model (created on first use)."""
        name = self._store.default(role)
        if name is not None:
            return self.get(name)
        builtin = BUILTIN_DEFAULTS.get(role)
        if builtin is None:
            raise ConfigError(
                f"No default {role} endpoint. Set one: aifuncs.endpoints.set_default({role!r}, NAME)"
                f" (or aifuncs endpoints default {role} NAME), or pass endpoint => 'NAME' to the function."
            )
        return self.get(self._builtin(role, builtin).name)

    def _builtin(self, role: str, builtin: tuple[str, str, dict[str, Any]]) -> Endpoint:
        """A built-in default model's endpoint, created on first use with no grants: admins hold it, others
        need one."""
        name, kind, options = builtin
        if self._store.get(name) is None:
            # False when another process created it meanwhile: either way it is there now
            self._store.insert(Endpoint(name, kind, options, f"built-in default {role} model (offline)"))
        endpoint = self._store.get(name)
        assert endpoint is not None
        outsiders = self._non_admin_managers(endpoint.name)
        if outsiders:  # made or handed over before the name was reserved: it would receive everyone's text
            raise ConfigError(
                f"The built-in default {role} endpoint {name!r} is managed by {', '.join(sorted(outsiders))}, not"
                f" only by admins, so it is not used as a default. An admin deletes it (aifuncs endpoints delete"
                f" {name}) to have the built-in one made again, or sets another default."
            )
        return endpoint

    def _non_admin_managers(self, name: str) -> set[str]:
        """Who besides admins holds CAN_MANAGE on `name` (a group counts whoever its members are)."""
        found = set()
        for holder in self._permissions.managers(name):
            try:
                principal = self._permissions.principals.get(holder)
            except ConfigError:
                continue  # its grants went with it
            if not (principal.admin and principal.kind != "group"):
                found.add(holder)
        return found


@dataclass(frozen=True)
class GatewaySettings:
    rate_checks: tuple[Check, ...]
    payloads: InferenceTable | None
    guardrails: Guardrails | None


def _inference_table(config: dict[str, Any]) -> InferenceTable | None:
    table = config.get("inference_table_config")
    parsed = None if table is None else parse_inference_table(table)
    return parsed if parsed is not None and parsed.enabled else None


GATEWAY_FIELDS = ("rate_limits", "inference_table_config", "guardrails")
ROLES = ("chat", "embedding", "forecast", "document")
# The offline models task functions use until a default is set: (endpoint name, kind, options).
BUILTIN_DEFAULTS: dict[str, tuple[str, str, dict[str, Any]]] = {
    "chat": ("smollm2", "llama_cpp", {}),
    "embedding": ("minilm", "sentence_transformers", {}),
    "forecast": ("forecaster", "forecast", {}),
    "document": ("parser", "document", {}),
}



def reserved_role(name: str) -> str | None:
    """The role whose built-in default model holds `name` (names compare without case), None for others."""
    return next((role for role, b in BUILTIN_DEFAULTS.items() if b[0].lower() == name.lower()), None)


_catalogs: dict[Path, Catalog] = {}


def default_catalog() -> Catalog:
    """The catalog of the current AIFUNCS_HOME (looked up on each call, so a changed home is honoured)."""
    path = home_file("catalog.db")
    if path not in _catalogs or not path.exists():
        _catalogs[path] = Catalog(path)
    return _catalogs[path]


def create(name: str, kind: str, *, description: str = "", **options: Any) -> Endpoint:
    """Register a model under `name`. `kind` is a provider (`python`, `mlflow`, ...); options are its settings."""
    return default_catalog().create(name, kind, description=description, **options)


def get(name: str) -> Endpoint:
    return default_catalog().get(name)


def list() -> builtins.list[Endpoint]:  # noqa: A001 - mirrors the CLI verb
    return default_catalog().list()


def update(name: str, *, description: str | None = None, replace: bool = False, **options: Any) -> Endpoint:
    return default_catalog().update(name, description=description, replace=replace, **options)


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
