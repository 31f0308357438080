"""`aifuncs endpoints` and `aifuncs cache`: the endpoint catalog and the kept answers."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from typing import Any

from aifuncs.cli._entities import entity_lines, given_entities, parse_value
from aifuncs.errors import AifuncsError, ConfigError


def _parse_option(text: str) -> tuple[str, Any]:
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise AifuncsError(f"Option {text!r} is not of the form key=value.")
    return key.strip(), parse_value(raw)  # numbers, booleans, lists, objects as JSON


def _options(pairs: Sequence[str] | None) -> dict[str, Any]:
    return dict(_parse_option(p) for p in pairs or [])


def _print_endpoint(endpoint: Any, as_json: bool) -> None:
    from aifuncs import catalog

    data = endpoint.to_dict()
    fallback = catalog.get_ai_gateway(endpoint.name).get("fallback_config")
    if as_json:
        print(json.dumps({**data, **({"fallback_config": fallback} if fallback else {})}, indent=2))
        return
    data.pop("served_entities", None)  # shown below, one line each
    for key, value in data.items():
        print(f"{key:12} {json.dumps(value) if isinstance(value, dict) else value}")
    for line in entity_lines(endpoint, fallback):
        print(line)


def _entities(args: argparse.Namespace) -> list[dict[str, Any]] | None:
    """The served entities the command line gives; none of them together with --kind or -o."""
    entities = given_entities(args.entity, args.entity_option, args.served_entities)
    if entities is not None and (getattr(args, "kind", None) or args.option):
        raise ConfigError(
            "--kind and -o describe an endpoint of one model; with --entity or --served-entities each entity"
            " has its own kind and options (--entity-option NAME.KEY=VALUE): give one or the other."
        )
    return entities


def _endpoints(args: argparse.Namespace) -> int:
    from aifuncs import catalog

    if args.action == "create":
        entities = _entities(args)
        if entities is None and not args.kind:
            raise ConfigError(
                f"Give {args.name!r} a --kind (one model, e.g. --kind openai -o model=gpt-4o-mini), or served"
                " entities (--entity NAME=KIND:PERCENT ..., or --served-entities FILE_OR_JSON)."
            )
        _print_endpoint(
            catalog.create(
                args.name,
                args.kind,
                description=args.description or "",
                served_entities=entities,
                **_options(args.option),
            ),
            args.json,
        )
    elif args.action == "get":
        _print_endpoint(catalog.get(args.name), args.json)
    elif args.action == "update":
        _print_endpoint(
            catalog.update(
                args.name,
                description=args.description,
                served_entities=_entities(args),
                **_options(args.option),
            ),
            args.json,
        )
    elif args.action == "delete":
        catalog.delete(args.name)
        print(f"Deleted endpoint {args.name!r}.")
    elif args.action == "versions":
        for version in catalog.versions(args.name):
            print(json.dumps(version))
    else:
        endpoints = catalog.list()
        if args.json:
            print(json.dumps([e.to_dict() for e in endpoints], indent=2))
        elif not endpoints:
            print(
                "No endpoints yet. Create one with `aifuncs endpoints create NAME --kind KIND -o key=value`."
            )
        else:
            for e in endpoints:
                several = f"[{len(e.entities)} served entities] " if e.entities else ""
                print(f"{e.name:30} {e.kind:10} v{e.version:<4} {several}{e.description}")
    return 0


def _cache(args: argparse.Namespace) -> int:
    from aifuncs import cache

    if args.action == "clear":
        count = cache.clear(args.endpoint)
        print(f"Forgot {count:,} answers" + (f" of endpoint {args.endpoint!r}." if args.endpoint else "."))
        return 0
    stats = cache.stats()
    if args.json:
        print(json.dumps({"path": str(stats.path), "answers": stats.answers, "bytes": stats.bytes,
                          "endpoints": stats.endpoints}, indent=2))  # fmt: skip
        return 0
    print(f"{stats.answers:,} answers, {stats.bytes / 1e6:.1f} MB in {stats.path}")
    for name, count in stats.endpoints.items():
        print(f"  {name:30} {count:>12,}")
    return 0


def add_commands(commands: Any) -> None:
    """Register `endpoints` on the main parser's subparsers."""
    endpoints = commands.add_parser("endpoints", help="manage the endpoint catalog")
    actions = endpoints.add_subparsers(dest="action", required=True)
    actions.add_parser("list", help="list endpoints").add_argument("--json", action="store_true")
    for name, helptext in (
        ("get", "show one endpoint"),
        ("delete", "delete an endpoint"),
        ("versions", "show every version of an endpoint"),
    ):
        sub = actions.add_parser(name, help=helptext)
        sub.add_argument("name")
        sub.add_argument("--json", action="store_true")
    create = actions.add_parser("create", help="register a model as an endpoint")
    create.add_argument("name")
    create.add_argument("--kind", help="python, mlflow, ... (installed providers): an endpoint of one model")
    update = actions.add_parser(
        "update", help="change an endpoint's options or served entities (bumps its version)"
    )
    update.add_argument("name")
    for sub in (create, update):
        sub.add_argument(
            "-o",
            "--option",
            action="append",
            metavar="KEY=VALUE",
            help="an option, e.g. -o model_uri=models:/wine/1 (values may be JSON)",
        )
        sub.add_argument(
            "--entity",
            action="append",
            metavar="NAME=KIND:PERCENT",
            help="a served entity and its share of the traffic, e.g. --entity prod=openai:90 (on update:"
            " the whole new list)",
        )
        sub.add_argument(
            "--entity-option",
            action="append",
            metavar="NAME.KEY=VALUE",
            help="an option of a served entity, e.g. --entity-option prod.model=gpt-4o-mini (values may be JSON)",
        )
        sub.add_argument(
            "--served-entities",
            metavar="FILE_OR_JSON",
            help='the served entities as JSON (a file, - for stdin, or the text): [{"name": ..., "kind": ...,'
            ' "options": {...}, "traffic_percentage": ...}, ...]',
        )
        sub.add_argument("--description")
        sub.add_argument("--json", action="store_true")
    endpoints.set_defaults(handler=_endpoints)


def add_cache_commands(commands: Any) -> None:
    """Register `cache` on the main parser's subparsers."""
    cache = commands.add_parser("cache", help="the kept answers under AIFUNCS_HOME")
    cache_actions = cache.add_subparsers(dest="action", required=True)
    cache_actions.add_parser("stats", help="answers kept, per endpoint").add_argument(
        "--json", action="store_true"
    )
    cache_actions.add_parser("clear", help="forget kept answers").add_argument(
        "--endpoint", help="only this endpoint's answers"
    )
    cache.set_defaults(handler=_cache)
