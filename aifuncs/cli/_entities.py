"""Served entities on the command line: `--entity NAME=KIND:PERCENT` with `--entity-option NAME.KEY=VALUE`,
or `--served-entities` with the list the Python API and `aifuncs endpoints get --json` use (JSON text, a file,
or `-` for standard input); and how `get` shows them."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from aifuncs.errors import ConfigError

ENTITY_FORM = "--entity NAME=KIND:PERCENT, e.g. --entity prod=openai:90"
OPTION_FORM = "--entity-option NAME.KEY=VALUE, e.g. --entity-option prod.model=gpt-4o-mini"
LIST_SHAPE = '[{"name": "prod", "kind": "openai", "options": {...}, "traffic_percentage": 90}, ...]'


def parse_value(raw: str) -> Any:
    """A value as the command line gives it: JSON where it parses (numbers, booleans, lists), else the text."""
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return raw


def given_entities(
    specs: list[str] | None, options: list[str] | None, listed: str | None
) -> list[dict[str, Any]] | None:
    """The served entities a command line describes (None: it describes none); ConfigError naming the
    flag and the form it takes for anything else."""
    if listed is not None:
        if specs or options:
            raise ConfigError(
                "Give the served entities either with --served-entities or with --entity and --entity-option,"
                " not both."
            )
        return _listed(listed)
    if not specs:
        if options:
            raise ConfigError(f"--entity-option needs the entity it configures: {ENTITY_FORM}.")
        return None
    entities: dict[str, dict[str, Any]] = {}
    for spec in specs:
        entity = _entity(spec)
        if entity["name"] in entities:
            raise ConfigError(f"--entity {spec!r}: the entity {entity['name']!r} is given twice.")
        entities[entity["name"]] = entity
    for text in options or []:
        target, key, value = _entity_option(text)
        if target not in entities:
            raise ConfigError(
                f"--entity-option {text!r} names the entity {target!r}, which no --entity gives"
                f" (given: {', '.join(entities)})."
            )
        entities[target]["options"][key] = value
    return list(entities.values())


def _entity(spec: str) -> dict[str, Any]:
    name, sep, rest = spec.partition("=")
    kind, colon, share = rest.partition(":")
    if not sep or not name.strip() or not kind.strip():
        raise ConfigError(f"--entity {spec!r}: write {ENTITY_FORM}.")
    entity: dict[str, Any] = {"name": name.strip(), "kind": kind.strip(), "options": {}}
    if colon:  # without a percentage: only an endpoint's sole entity (it takes 100)
        if not share.strip().isdigit():
            raise ConfigError(
                f"--entity {spec!r}: the traffic percentage is a whole number from 0 to 100 (got {share!r})."
            )
        entity["traffic_percentage"] = int(share)
    return entity


def _entity_option(text: str) -> tuple[str, str, Any]:
    target_key, sep, raw = text.partition("=")
    target, dot, key = target_key.partition(".")
    if not sep or not dot or not target.strip() or not key.strip():
        raise ConfigError(f"--entity-option {text!r}: write {OPTION_FORM}.")
    return target.strip(), key.strip(), parse_value(raw)


def _listed(source: str) -> list[dict[str, Any]]:
    """--served-entities: JSON text, `-` (standard input) or a file holding it; a list of entities, or an
    object with one (what `aifuncs endpoints get --json` prints)."""
    if source == "-":
        text, where = sys.stdin.read(), "standard input"
    elif source.lstrip().startswith(("[", "{")):
        text, where = source, "--served-entities"
    else:
        path = Path(source)
        if not path.is_file():
            raise ConfigError(
                f"--served-entities {source!r} is neither JSON nor a file: give a file, '-' for standard input,"
                f" or the JSON list itself, {LIST_SHAPE}."
            )
        text, where = path.read_text(), str(path)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise ConfigError(
            f"{where} is not JSON: {error.msg} at line {error.lineno}, column {error.colno}."
        ) from None
    if isinstance(data, dict) and "served_entities" in data:
        data = data["served_entities"]
    if not isinstance(data, list):
        raise ConfigError(f"{where} holds no list of served entities: give {LIST_SHAPE}.")
    return data


def entity_lines(endpoint: Any, fallback: dict[str, Any] | None) -> list[str]:
    """The served entities of an endpoint of several, one line each with its route, then its fallbacks (an
    endpoint of one model: only a fallback that is on)."""
    if not endpoint.entities:
        shown = (fallback or {}).get("enabled")
        return [f"fallback     {fallback_text(fallback or {}, [endpoint.name])}"] if shown else []
    lines = ["served entities (traffic split; failed requests fall back in list order):"]
    width = max(len(e.name) for e in endpoint.entities)
    for entity in endpoint.entities:
        share = f"{entity.traffic_percentage:>3}%"
        route = share if entity.traffic_percentage else f"{share} (fallback only)"
        options = " ".join(f"{k}={_shown(v)}" for k, v in sorted(entity.options.items()))
        lines.append(f"  {entity.name:{width}}  {entity.kind:10} {route}  {options}".rstrip())
    lines.append(f"fallback     {fallback_text(fallback or {}, [e.name for e in endpoint.entities])}")
    return lines


def fallback_text(config: dict[str, Any], entities: list[str]) -> str:
    """fallback_config in words: what a request that failed on its entity is asked of next."""
    if not config.get("enabled"):
        return "off (a request its entity failed fails; `aifuncs gateway fallback NAME --enable` turns it on)"
    steps = []
    if len(entities) > 1:
        steps.append(f"the other entities in list order ({', '.join(entities)})")
    if config.get("endpoint"):
        steps.append(f"endpoint {config['endpoint']!r}")
    return "on: " + (", then ".join(steps) if steps else "nothing else to ask (one entity, no endpoint)")


def _shown(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)
