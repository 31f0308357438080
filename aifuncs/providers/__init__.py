"""Endpoint kinds, found through the entry-point group `aifuncs.providers` and imported lazily."""

from __future__ import annotations

import functools
from importlib.metadata import entry_points

from aifuncs.errors import UnknownProviderKind
from aifuncs.providers.base import InputColumn, Provider, ProviderOptions

GROUP = "aifuncs.providers"

__all__ = ["GROUP", "InputColumn", "Provider", "ProviderOptions", "available_kinds", "provider_class"]


@functools.cache
def _entry_points() -> dict[str, object]:
    return {ep.name: ep for ep in entry_points(group=GROUP)}


def available_kinds() -> list[str]:
    return sorted(_entry_points())


def provider_class(kind: str) -> type[Provider]:
    entry = _entry_points().get(kind)
    if entry is None:
        kinds = ", ".join(available_kinds()) or "none (is aifuncs installed? run `pip install -e .`)"
        raise UnknownProviderKind(f"Unknown endpoint kind {kind!r}. Installed kinds: {kinds}.")
    cls = entry.load()  # type: ignore[attr-defined]
    if not (isinstance(cls, type) and issubclass(cls, Provider)):
        raise UnknownProviderKind(f"Entry point {kind!r} in {GROUP} does not name a Provider class.")
    return cls
