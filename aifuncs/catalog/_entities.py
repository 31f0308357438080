"""The served entities of an endpoint that serves several models: checked whole before they are stored.

An endpoint holds 1 to 10 entities with unique names, each one of the catalog's kinds with its options (checked
and authored as an endpoint of that kind would be) and a whole percentage of the traffic; the percentages sum
to 100 (an entity with 0 takes no traffic of its own: a fallback). Every entity answers the same task, so
whichever one a request reaches, the call site's types hold.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from aifuncs._endpoint import MAX_ENTITIES, NAME_RULE, ServedEntity
from aifuncs.errors import ConfigError
from aifuncs.providers import provider_class

Check = Callable[[str, str, dict[str, Any]], dict[str, Any]]  # (label, kind, options) -> options as stored

__all__ = ["checked_entities", "task_of"]


def task_of(kind: str, options: dict[str, Any]) -> str:
    """What an entity answers, as far as a call site's types go: chat, completions, embeddings (text models
    by their `task` option) or the kind's own tabular outputs."""
    if provider_class(kind).returns_text:
        return str(options.get("task", "chat"))
    return f"{kind} outputs"


def checked_entities(endpoint: str, given: Sequence[Any], check: Check) -> tuple[ServedEntity, ...]:
    """`given` (ServedEntity objects or dicts: name, kind, options, traffic_percentage) as stored, each
    entity's options passed through `check`; else ConfigError naming the problem, nothing stored."""
    if isinstance(given, (str, bytes, dict)) or not isinstance(given, Sequence) or not given:
        raise ConfigError(
            "served_entities is a list of 1 to 10 entities, each"
            ' {"name": ..., "kind": ..., "options": {...}, "traffic_percentage": ...}.'
        )
    if len(given) > MAX_ENTITIES:
        raise ConfigError(f"An endpoint serves at most {MAX_ENTITIES} entities; {len(given)} were given.")
    entities = [_entity(item, index) for index, item in enumerate(given)]
    names = [e.name for e in entities]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ConfigError(
            f"Served entity names must be unique in an endpoint; repeated: {', '.join(repeated)}."
        )
    if len(entities) == 1 and entities[0].traffic_percentage == -1:
        entities[0] = ServedEntity(entities[0].name, entities[0].kind, entities[0].options, 100)
    unsaid = [e.name for e in entities if e.traffic_percentage == -1]
    if unsaid:
        raise ConfigError(
            f"Give each served entity of {endpoint!r} its traffic_percentage (summing to 100; 0 for a fallback"
            f" only); missing for: {', '.join(unsaid)}."
        )
    shares = [e.traffic_percentage for e in entities]
    if sum(shares) != 100:
        listed = ", ".join(f"{e.name}={e.traffic_percentage}" for e in entities)
        raise ConfigError(
            f"The traffic percentages of {endpoint!r} sum to {sum(shares)} ({listed}); they must sum to 100"
            " (give 0 to an entity that only serves as a fallback)."
        )
    tasks = {e.name: task_of(e.kind, e.options) for e in entities}
    if len(set(tasks.values())) > 1:
        listed = ", ".join(f"{name}: {task}" for name, task in tasks.items())
        raise ConfigError(
            f"The served entities of {endpoint!r} answer different tasks ({listed}); every entity of an"
            " endpoint answers the same one. Make separate endpoints for the others."
        )
    return tuple(
        ServedEntity(e.name, e.kind, check(f"{endpoint}/{e.name}", e.kind, e.options), e.traffic_percentage)
        for e in entities
    )


def _entity(item: Any, index: int) -> ServedEntity:
    name: Any
    kind: Any
    options: Any
    share: Any
    if isinstance(item, ServedEntity):
        name, kind, options, share = item.name, item.kind, item.options, item.traffic_percentage
    elif isinstance(item, dict):
        unknown = sorted(set(item) - {"name", "kind", "options", "traffic_percentage"})
        if unknown:
            raise ConfigError(
                f"Served entity {index + 1}: unknown fields {unknown}; an entity has name, kind, options and"
                " traffic_percentage."
            )
        name, kind, options = item.get("name"), item.get("kind"), item.get("options") or {}
        share = item.get("traffic_percentage")
    else:
        raise ConfigError(f"Served entity {index + 1} is not an object with name, kind and options.")
    if not isinstance(name, str) or not NAME_RULE.fullmatch(name):
        raise ConfigError(
            f"Served entity {index + 1} needs a name of 1-128 letters, digits, '_', '-' or '.', starting with a"
            f" letter (got {name!r})."
        )
    if not isinstance(kind, str) or not kind:
        raise ConfigError(f"Served entity {name!r} needs a kind (e.g. openai, mlflow, llama_cpp).")
    if not isinstance(options, dict):
        raise ConfigError(f"The options of served entity {name!r} are an object.")
    if share is None:
        return ServedEntity(name, kind, dict(options), -1)  # settled by the caller: 100 if it is the only one
    if isinstance(share, bool) or not isinstance(share, int) or not 0 <= share <= 100:
        raise ConfigError(
            f"The traffic_percentage of served entity {name!r} is a whole number from 0 to 100 (got {share!r})."
        )
    return ServedEntity(name, kind, dict(options), share)
