"""The catalog of endpoints: every model a team uses, under one name each.

    import aifuncs
    aifuncs.endpoints.create("wine", kind="mlflow", model_uri="models:/wine/1")
    aifuncs.endpoints.list()

Stored in SQLite under AIFUNCS_HOME, so every process on the machine sees the same endpoints. Each
update bumps the endpoint's version. Secrets are never stored: an endpoint names the environment
variable that holds its key.
"""

from __future__ import annotations

import builtins
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from aifuncs._endpoint import Endpoint, check_name, check_no_secrets
from aifuncs._home import home
from aifuncs.catalog._store import SqliteStore
from aifuncs.errors import ConfigError, EndpointExists, UnknownEndpoint
from aifuncs.providers import provider_class

__all__ = [
    "Catalog",
    "Endpoint",
    "create",
    "default",
    "default_catalog",
    "delete",
    "get",
    "list",
    "set_default",
    "update",
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
    """Endpoints stored in one SQLite file."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self._store = SqliteStore(self.path)

    def create(self, name: str, kind: str, *, description: str = "", **options: Any) -> Endpoint:
        check_name(name)
        endpoint = Endpoint(name, kind, _validate(name, kind, options), description)
        if not self._store.insert(endpoint):
            raise EndpointExists(f"Endpoint {name!r} already exists; use update() to change it.")
        return self.get(name)

    def get(self, name: str) -> Endpoint:
        endpoint = self._store.get(name)
        if endpoint is None:
            builtin = next((b for b in BUILTIN_DEFAULTS.items() if b[1][0] == name), None)
            if builtin is not None:  # a built-in offline model, asked for by name before first use
                return self._builtin(*builtin)
            raise UnknownEndpoint(name, self._store.names())
        return endpoint

    def list(self) -> builtins.list[Endpoint]:
        return self._store.list()

    def names(self) -> builtins.list[str]:
        return self._store.names()

    def update(
        self, name: str, *, description: str | None = None, replace: bool = False, **options: Any
    ) -> Endpoint:
        """Change options (merged into the current ones unless `replace`; None removes one). Bumps the version."""
        current = self.get(name)
        merged = dict(options) if replace else {**current.options, **options}
        merged = _validate(name, current.kind, merged)
        updated = Endpoint(
            current.name, current.kind, merged, current.description if description is None else description
        )
        result = self._store.replace(updated)
        if result is None:  # deleted by another process in between
            raise UnknownEndpoint(name, self._store.names())
        return result

    def delete(self, name: str) -> None:
        if not self._store.delete(name):
            raise UnknownEndpoint(name, self._store.names())

    def versions(self, name: str) -> builtins.list[dict[str, Any]]:
        self.get(name)
        return self._store.versions(name)

    def set_default(self, role: str, name: str | None) -> None:
        """Make `name` the endpoint task functions use for `role` ("chat" or "embedding"); None unsets it."""
        if role not in ROLES:
            raise ConfigError(f"Unknown default role {role!r}: use one of {', '.join(ROLES)}.")
        if name is not None:
            name = self.get(name).name
        self._store.set_default(role, name)

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
        return self._builtin(role, builtin)

    def _builtin(self, role: str, builtin: tuple[str, str, dict[str, Any]]) -> Endpoint:
        name, kind, options = builtin
        if self._store.get(name) is None:
            try:
                self.create(name, kind, description=f"built-in default {role} model (offline)", **options)
            except EndpointExists:
                pass  # another process created it meanwhile
        endpoint = self._store.get(name)
        assert endpoint is not None
        return endpoint


ROLES = ("chat", "embedding")
# The offline models task functions use until a default is set: (endpoint name, kind, options).
BUILTIN_DEFAULTS: dict[str, tuple[str, str, dict[str, Any]]] = {
    "chat": ("smollm2", "llama_cpp", {}),
    "embedding": ("minilm", "sentence_transformers", {}),
}

_catalogs: dict[Path, Catalog] = {}


def default_catalog() -> Catalog:
    """The catalog of the current AIFUNCS_HOME (looked up on each call, so a changed home is honoured)."""
    path = home() / "catalog.db"
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


def set_default(role: str, name: str | None) -> None:
    """The endpoint task functions (ai_classify, ai_summarize...) use for `role`: "chat" or "embedding"."""
    default_catalog().set_default(role, name)


def default(role: str) -> Endpoint:
    return default_catalog().default(role)
