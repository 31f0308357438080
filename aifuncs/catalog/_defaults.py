"""The catalog's defaults: the endpoint task functions use for each role, the built-in offline models that
stand in until one is set, and the names those models hold."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aifuncs._endpoint import Endpoint
from aifuncs.catalog._parts import CatalogPart
from aifuncs.errors import ConfigError, PermissionDenied

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


class DefaultsMethods(CatalogPart):
    """The defaults per role (admins set them) and the built-in models behind them."""

    if TYPE_CHECKING:  # what Catalog gives this group besides CatalogPart

        def _non_admin_managers(self, name: str) -> set[str]: ...

    def _refuse_reserved(self, name: str, doing: str) -> None:
        raise PermissionDenied(
            f"{self.principal.name!r} may not {doing} {name!r}: the name belongs to the built-in default"
            f" {reserved_role(name)} model, which serves everyone's text, so only an admin creates or changes it."
            " Choose another name."
        )

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
