"""Options objects: what a caller may spend (`SpendingLimits`) and how its requests go (`RequestOptions`).

The public functions (`aifuncs.sql`, the pandas accessors, `jobs.run`, `spark.sql`, the CLI) take these
objects, and still take the same settings as keywords; `merge` puts the two forms together, refusing a
setting given both ways.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import Any, TypeVar

from aifuncs.errors import ArgumentError
from aifuncs.runtime import Budget


@dataclass(frozen=True)
class SpendingLimits:
    """What a query or job may spend (None: no limit): requests sent, tokens, and cost from the prices set on
    its endpoints. A query estimated above a limit is refused before it starts; one that reaches a limit
    while running stops sending requests."""

    max_requests: int | None = None
    max_tokens: int | None = None
    max_cost_usd: float | None = None

    def __post_init__(self) -> None:
        for name in ("max_requests", "max_tokens"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
                raise ArgumentError(
                    f"{name} is a whole number of 0 or more, or None for no limit; not {value!r}."
                )
        cost = self.max_cost_usd
        if cost is not None and (not isinstance(cost, int | float) or isinstance(cost, bool) or cost < 0):
            raise ArgumentError(f"max_cost_usd is a number of dollars, 0 or more, or None; not {cost!r}.")

    def budget(self, name: str = "query") -> Budget:
        """A fresh meter counting against these limits."""
        return Budget(self.max_requests, self.max_tokens, self.max_cost_usd, name=name)


@dataclass(frozen=True)
class RequestOptions:
    """How a query's requests go: the labels (`usage_context`, e.g. {"team": "growth"}) and the client's id
    every usage row carries; `progress` (a line on stderr; None: when stderr is a terminal); whether a
    request an endpoint's rate limits hold back waits its turn (`wait_for_limits`) or raises RateLimited."""

    usage_context: Mapping[str, str] | None = None
    client_request_id: str | None = None
    progress: bool | None = None
    wait_for_limits: bool = True


_Options = TypeVar("_Options", SpendingLimits, RequestOptions)


def merge(kind: type[_Options], given: _Options | None, **keywords: Any) -> _Options:
    """`given` (or the defaults) with the settings passed as keywords; a keyword left at None is not given.
    Refuses a setting given both in the object and as a keyword, and an object of another type."""
    if given is None:
        given = kind()
    elif not isinstance(given, kind):
        raise ArgumentError(
            f"Expected an aifuncs.{kind.__name__}, not {type(given).__name__}: e.g. {kind.__name__}(...)."
        )
    defaults = kind()
    changes = {}
    for field in fields(kind):
        value = keywords.get(field.name)
        if value is None:
            continue
        if getattr(given, field.name) != getattr(defaults, field.name):
            raise ArgumentError(
                f"{field.name} is given both as a keyword and in {kind.__name__}; give it once."
            )
        changes[field.name] = value
    return replace(given, **changes) if changes else given
