"""The endpoint record and the rules for names and options."""

from __future__ import annotations

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


@dataclass(frozen=True)
class Endpoint:
    """One entry of the catalog: a model reachable under a name."""

    name: str
    kind: str
    options: dict[str, Any] = field(default_factory=dict)
    description: str = ""
    version: int = 1
    created_at: datetime | None = None
    updated_at: datetime | None = None

    @functools.cached_property
    def identity(self) -> str:
        """The endpoint version as one text (name and version alone are not unique: a deleted and re-created
        endpoint, or another AIFUNCS_HOME). Made once: the runtime asks it several times a request."""
        return json.dumps([self.name, self.version, self.kind, self.options], sort_keys=True, default=str)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "version": self.version,
            "description": self.description,
            "options": dict(self.options),
            "created_at": self.created_at.isoformat() if self.created_at else None,
            "updated_at": self.updated_at.isoformat() if self.updated_at else None,
        }


def check_name(name: str) -> str:
    if not isinstance(name, str) or not NAME_RULE.match(name):
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
