"""The catalog's AI gateway methods: rate limits, guardrails and inference tables of an endpoint."""

from __future__ import annotations

import builtins
import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from aifuncs._endpoint import NAME_RULE, Endpoint
from aifuncs.catalog._defaults import BUILTIN_DEFAULTS, reserved_role
from aifuncs.catalog._parts import CatalogPart
from aifuncs.errors import ConfigError, PermissionDenied, UnknownEndpoint
from aifuncs.governance.guardrails import Guardrails, parse_guardrails
from aifuncs.governance.limits import Check, applicable, parse_limits
from aifuncs.governance.payloads import InferenceTable, parse_inference_table


class GatewayMethods(CatalogPart):
    """An endpoint's AI gateway: stored whole, checked before it is stored, read once per binding."""

    if TYPE_CHECKING:  # what Catalog gives this group besides CatalogPart

        def _builtin(self, role: str, builtin: tuple[str, str, dict[str, Any]]) -> Endpoint: ...

    def get_ai_gateway(self, name: str) -> dict[str, Any]:
        """The endpoint's AI gateway configuration in Databricks' shape (`rate_limits` so far)."""
        endpoint = self.authorize(name, "view")
        shown = {"rate_limits": [], **self._store.gateway(endpoint.name)}
        if isinstance(shown.get("fallback_config"), dict):  # which endpoint version it follows: internal
            shown["fallback_config"] = parse_fallback(shown["fallback_config"]).to_dict()
        return shown

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
        if config.get("fallback_config") is not None:
            fallback = parse_fallback(config["fallback_config"])
            if fallback.endpoint is not None:
                target = self._may_fall_back_to(endpoint.name, fallback.endpoint)
                # the endpoint named, not whatever is made later under its name (see `Fallback.follows`)
                fallback = dataclasses.replace(fallback, created=_created(target))
            stored["fallback_config"] = fallback.stored()
        if not self._store.set_gateway(endpoint.name, stored):
            raise UnknownEndpoint(name, self.names())
        self._note("ai-gateway.put", endpoint.name, **stored)
        return self.get_ai_gateway(endpoint.name)

    def _may_fall_back_to(self, name: str, target: str) -> Endpoint:
        """A fallback endpoint answers for every caller of `name` that may query it: its author needs CAN_QUERY
        on it, and following fallbacks from it must not come back to `name` (a cycle). The endpoint named."""
        try:
            named = self.authorize(target, "query")
        except UnknownEndpoint:
            raise ConfigError(
                f"The fallback endpoint {target!r} does not exist (or you may not see it): make it, or name"
                " another."
            ) from None
        except PermissionDenied:
            raise PermissionDenied(
                f"{self.principal.name!r} may not name {target!r} as the fallback of {name!r}: that needs"
                " CAN_QUERY on it."
            ) from None
        chain: list[str] = [name]
        at: str | None = target
        while at is not None:
            if at.lower() in (c.lower() for c in chain):
                raise ConfigError(
                    f"Falling back from {name!r} to {target!r} makes a cycle ({' -> '.join([*chain, at])}):"
                    " name an endpoint whose fallbacks do not lead back."
                )
            chain.append(at)
            at = parse_fallback(self._store.gateway(at).get("fallback_config") or {}).endpoint
        return named

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
            parse_fallback(config.get("fallback_config") or {}),
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


@dataclass(frozen=True)
class Fallback:
    """Databricks' `fallback_config`: a request that fails on its served entity (after its retries: 429, 5xx,
    a timeout, unreachable) goes to the endpoint's other entities in list order, then to `endpoint` if named."""

    enabled: bool = False
    endpoint: str | None = None  # another endpoint to ask last (this server's own extension)
    # When `endpoint` was created, as its author saw it: an endpoint deleted and made again under the name (by
    # anyone entitled to create endpoints) is another one, which the author never chose to send requests to.
    created: str | None = None

    def to_dict(self) -> dict[str, Any]:
        shown: dict[str, Any] = {"enabled": self.enabled}
        if self.endpoint is not None:
            shown["endpoint"] = self.endpoint
        return shown

    def stored(self) -> dict[str, Any]:
        return {**self.to_dict(), _CREATED: self.created} if self.endpoint is not None else self.to_dict()

    def follows(self, target: Endpoint) -> bool:
        """Whether `target` (found under `endpoint` now) is the endpoint the author named."""
        return target.name.lower() == (self.endpoint or "").lower() and _created(target) == self.created


_CREATED = "endpoint_created_at"  # stored beside `endpoint`, never shown or taken from a caller


def _created(endpoint: Endpoint) -> str | None:
    return None if endpoint.created_at is None else endpoint.created_at.isoformat()


def parse_fallback(config: Any) -> Fallback:
    if not isinstance(config, dict) or set(config) - {"enabled", "endpoint", _CREATED}:
        raise ConfigError(
            'fallback_config is {"enabled": true} (and optionally "endpoint": another endpoint to ask last).'
        )
    enabled, target = config.get("enabled", False), config.get("endpoint")
    if not isinstance(enabled, bool):
        raise ConfigError("fallback_config.enabled is true or false.")
    if target is not None and (not isinstance(target, str) or not NAME_RULE.fullmatch(target)):
        raise ConfigError(f"fallback_config.endpoint names an endpoint (got {target!r}).")
    created = config.get(_CREATED)
    return Fallback(enabled, target if enabled else None, created if isinstance(created, str) else None)


@dataclass(frozen=True)
class GatewaySettings:
    rate_checks: tuple[Check, ...]
    payloads: InferenceTable | None
    guardrails: Guardrails | None
    fallback: Fallback = Fallback()


def _inference_table(config: dict[str, Any]) -> InferenceTable | None:
    table = config.get("inference_table_config")
    parsed = None if table is None else parse_inference_table(table)
    return parsed if parsed is not None and parsed.enabled else None


GATEWAY_FIELDS = ("rate_limits", "inference_table_config", "guardrails", "fallback_config")
