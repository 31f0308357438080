"""The endpoint record and the rules for names and options.

An endpoint serves one model, or several (`entities`): Databricks' served entities, each one of the catalog's
kinds with its options and its share of the traffic. The endpoint's own `kind` and `options` are its first
entity's, so code that asks what an endpoint is (a chat model, a tabular one) reads the one it starts with;
the runtime picks the entity of each request (`route`) and calls it through the entity's own view
(`served_entity`), an `Endpoint` of that kind and options.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from aifuncs.errors import ConfigError, InvalidEndpointName

NAME_RULE = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]{0,127}$")

# Option names that would hold a secret. Keys live in secret scopes (or the environment); an endpoint names them.
_SECRET_OPTION = re.compile(r"(^|_)(api_?key|token|secret|password)$", re.IGNORECASE)


# The key of the stored options under which an endpoint of several served entities keeps them (all of them;
# the stored kind and the other options are the first one's, read as they always were).
ENTITIES_KEY = "served_entities"
MAX_ENTITIES = 10  # Databricks' bound: at most 10 served entities per endpoint


@dataclass(frozen=True)
class ServedEntity:
    """One model of an endpoint: its name (unique in the endpoint), kind, options and share of the traffic."""

    name: str
    kind: str
    options: dict[str, Any] = field(default_factory=dict)
    traffic_percentage: int = 100

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "options": dict(self.options),
            "traffic_percentage": self.traffic_percentage,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ServedEntity:
        return cls(
            data["name"], data["kind"], dict(data.get("options") or {}), int(data["traffic_percentage"])
        )


@dataclass(frozen=True)
class Endpoint:
    """One entry of the catalog: a model (or several, `entities`) reachable under a name."""

    name: str
    kind: str
    options: dict[str, Any] = field(default_factory=dict)
    description: str = ""
    version: int = 1
    created_at: datetime | None = None
    updated_at: datetime | None = None
    entities: tuple[ServedEntity, ...] = ()  # several served entities; () for an endpoint of one model
    entity: str | None = None  # set on one served entity's view (`served_entity`): which one it is

    @functools.cached_property
    def identity(self) -> str:
        """The endpoint version as one text (name and version alone are not unique: a deleted and re-created
        endpoint, or another AIFUNCS_HOME). Made once: the runtime asks it several times a request."""
        parts: list[Any] = [self.name, self.version, self.kind, self.options]
        if self.entities or self.entity is not None:
            parts += [[e.to_dict() for e in self.entities], self.entity]
        return json.dumps(parts, sort_keys=True, default=str)

    @property
    def entity_name(self) -> str:
        """The served entity this view calls: its own name for an endpoint of one model."""
        return self.entity if self.entity is not None else self.name

    @property
    def split(self) -> bool:
        """Whether requests are spread over (or fall back across) several served entities."""
        return len(self.entities) > 1

    def served_entity(self, name: str) -> Endpoint:
        """The view of one served entity: an endpoint of its kind and options, under the endpoint's name and
        version (its limits, grants and logs are the endpoint's), naming the entity."""
        for entity in self.entities:
            if entity.name == name:
                return dataclasses.replace(
                    self, kind=entity.kind, options=entity.options, entities=(), entity=entity.name
                )
        if not self.entities and name == self.name:
            return self
        raise KeyError(name)

    def served_entities(self) -> list[ServedEntity]:
        """Every served entity, in list order (an endpoint of one model: itself, under its own name)."""
        if self.entities:
            return list(self.entities)
        return [ServedEntity(self.name, self.kind, dict(self.options), 100)]

    def stored_options(self) -> dict[str, Any]:
        """The options as the catalog stores them: the first entity's, plus every entity when there are several."""
        if not self.entities:
            return dict(self.options)
        return {**self.options, ENTITIES_KEY: [e.to_dict() for e in self.entities]}

    @classmethod
    def from_stored(cls, name: str, kind: str, options: dict[str, Any], **fields: Any) -> Endpoint:
        """The endpoint a stored row describes (see `stored_options`)."""
        stored = options.pop(ENTITIES_KEY, None)
        entities = tuple(ServedEntity.from_dict(e) for e in stored) if stored else ()
        return cls(name, kind, options, entities=entities, **fields)

    def to_dict(self) -> dict[str, Any]:
        shown = {
            "name": self.name,
            "kind": self.kind,
            "version": self.version,
            "description": self.description,
            "options": dict(self.options),
            "created_at": self.created_at.isoformat() if self.created_at else None,
            "updated_at": self.updated_at.isoformat() if self.updated_at else None,
        }
        if self.entities:
            shown["served_entities"] = [e.to_dict() for e in self.entities]
        return shown


def check_name(name: str) -> str:
    if not isinstance(name, str) or not NAME_RULE.fullmatch(name):  # `$` alone lets a final newline through
        raise InvalidEndpointName(
            f"Invalid endpoint name {name!r}: use 1-128 characters, letters, digits, '_', '-' or '.',"
            " starting with a letter."
        )
    return name


def check_no_secrets(options: dict[str, Any]) -> None:
    for key in options:
        # `*_env` names a variable and `*_secret` a secret scope's key ("scope/key"): neither holds the key
        if _SECRET_OPTION.search(key) and not key.endswith(("_env", "_secret")):
            raise ConfigError(
                f"Option {key!r} would store a secret in the catalog. Put the key in a secret scope"
                f" (aifuncs secrets put SCOPE KEY) and name it instead, e.g. {key.rstrip('_')}_secret='SCOPE/KEY'"
                f" (admins may also name an environment variable: {key.rstrip('_')}_env='MY_API_KEY')."
            )
