"""`aifuncs whoami|users|groups|service-principals|tokens|permissions|gateway|rate-limits|audit|keys|secrets|
egress`: the directory and entitlements, endpoint grants, AI gateway settings, the audit log, the encryption
key, secret scopes and the egress allow-list (the last two in `secrets.py`).

Each acts as the process's identity (`AIFUNCS_TOKEN`, else the OS account owning AIFUNCS_HOME) and goes
through the same checks as the Python API.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from aifuncs.cli.secrets import add_entitlement_actions, add_secret_commands, run_entitlements
from aifuncs.errors import AifuncsError

_KINDS = {"users": "user", "groups": "group", "service-principals": "service_principal"}
_GRANT_FLAGS = {"user": "user_name", "group": "group_name", "service_principal": "service_principal_name"}


def _print(rows: list[dict[str, Any]], as_json: bool, empty: str) -> None:
    if as_json:
        print(json.dumps(rows, indent=2, default=str))
    elif not rows:
        print(empty)
    else:
        for row in rows:
            print("  ".join(f"{value}" for value in row.values() if value not in (None, "")))


def _whoami(args: argparse.Namespace) -> int:
    from aifuncs import governance

    me = governance.whoami()
    groups = sorted(governance.directory().groups_of(me.name))
    if args.json:
        print(json.dumps({"name": me.name, "kind": me.kind, "admin": me.admin, "implicit": me.implicit,
                          "groups": groups}, indent=2))  # fmt: skip
    else:
        how = "the OS account that owns AIFUNCS_HOME" if me.implicit else "from AIFUNCS_TOKEN"
        print(f"{me.name} ({me.kind}{', admin' if me.admin else ''}; {how})")
        if groups:
            print(f"groups: {', '.join(groups)}")
    return 0


def _principals(args: argparse.Namespace) -> int:
    from aifuncs import governance

    if args.action in ("entitle", "unentitle", "entitlements"):
        return run_entitlements(args)
    kind = _KINDS[args.command]
    directory = governance.directory()
    if args.action == "create":
        if kind == "group":
            directory.create_group(args.name, members=args.member or [])
        elif kind == "user":
            directory.create_user(args.name, admin=args.admin)
        else:
            directory.create_service_principal(args.name, admin=args.admin)
        print(f"Created {kind.replace('_', ' ')} {args.name!r}.")
    elif args.action == "delete":
        found = directory.get(args.name)
        if found.kind != kind:
            raise AifuncsError(
                f"{args.name!r} is a {found.kind.replace('_', ' ')}, not a {kind.replace('_', ' ')}."
            )
        directory.delete(args.name)
        print(f"Deleted {kind.replace('_', ' ')} {args.name!r} (its memberships, grants and tokens too).")
    elif args.action == "add-member":
        directory.add_member(args.name, args.member)
        print(f"Added {args.member!r} to {args.name!r}.")
    elif args.action == "remove-member":
        directory.remove_member(args.name, args.member)
        print(f"Removed {args.member!r} from {args.name!r}.")
    elif args.action == "members":
        for member in directory.members(args.name):
            print(member)
    else:
        rows = [
            {"name": p.name, "admin": "admin" if p.admin else "",
             "groups": ",".join(sorted(directory.groups_of(p.name))),
             **({"members": ",".join(directory.members(p.name))} if kind == "group" else {})}
            for p in directory.list(kind)
        ]  # fmt: skip
        _print(rows, args.json, f"No {args.command.replace('-', ' ')} yet.")
    return 0


def _tokens(args: argparse.Namespace) -> int:
    from aifuncs import governance

    directory = governance.directory()
    if args.action == "create":
        days = None if args.no_expiry else args.days
        secret, token = directory.create_token(args.principal, days=days, comment=args.comment or "")
        print(secret)  # alone on stdout: `export AIFUNCS_TOKEN=$(aifuncs tokens create ...)` works
        expiry = f"expires {token.expires_at:%Y-%m-%d}" if token.expires_at else "never expires"
        print(
            f"Token {token.id} for {token.principal} ({expiry}). It is shown this once: keep it in a secret"
            " store, and set AIFUNCS_TOKEN to act as it.",
            file=sys.stderr,
        )
    elif args.action == "revoke":
        directory.revoke_token(args.id)
        print(f"Revoked token {args.id}.")
    else:
        rows = [
            {"id": t.id, "display": t.display, "principal": t.principal, "comment": t.comment,
             "created_at": f"{t.created_at:%Y-%m-%d}",
             "expires_at": f"expires {t.expires_at:%Y-%m-%d}" if t.expires_at else "no expiry",
             "revoked_at": f"REVOKED {t.revoked_at:%Y-%m-%d}" if t.revoked_at else "",
             "last_used_at": f"used {t.last_used_at:%Y-%m-%d %H:%M}" if t.last_used_at else "never used"}
            for t in directory.list_tokens(args.principal)
        ]  # fmt: skip
        _print(rows, args.json, "No tokens.")
    return 0


def _acl(args: argparse.Namespace) -> list[dict[str, Any]]:
    """The access_control_list a command line gives: --user NAME=LEVEL ..., or --acl JSON."""
    entries: list[dict[str, Any]] = json.loads(args.acl) if args.acl else []
    if not isinstance(entries, list):
        raise AifuncsError('--acl takes a JSON list of entries, e.g. \'[{"user_name": "alice", ...}]\'.')
    for kind, key in _GRANT_FLAGS.items():
        for grant in getattr(args, kind) or []:
            name, sep, level = grant.partition("=")
            if not sep or not name or not level:
                flag = kind.replace("_", "-")
                raise AifuncsError(f"--{flag} {grant!r}: write NAME=LEVEL, e.g. --{flag} alice=CAN_QUERY.")
            entries.append({key: name, "permission_level": level.upper()})
    return entries


def _permissions(args: argparse.Namespace) -> int:
    from aifuncs import catalog

    if args.action == "get":
        permissions = catalog.get_permissions(args.endpoint)
    else:
        entries = _acl(args)
        if args.action == "update" and not entries:
            raise AifuncsError(
                "Name at least one grant: --user NAME=LEVEL, --group ..., --service-principal ..."
            )
        change = catalog.set_permissions if args.action == "set" else catalog.update_permissions
        permissions = change(args.endpoint, entries)
    if args.json:
        print(json.dumps(permissions, indent=2))
        return 0
    acl = permissions["access_control_list"]
    if not acl:
        print(f"No grants on {args.endpoint!r}: admins only.")
    for entry in acl:
        name = entry["display_name"]
        for held in entry["all_permissions"]:
            origin = ", ".join(held.get("inherited_from_object", [])) if held["inherited"] else "direct"
            print(f"{name:30} {held['permission_level']:11} {origin}")
    return 0


def _audit(args: argparse.Namespace) -> int:
    from aifuncs import governance

    if args.action == "verify":
        broken = governance.verify_audit()
        entries = governance.AuditLog(governance.directory().path).entries()
        if broken is not None:
            print(
                f"The audit log is broken at entry {broken}: it was changed or removed after it was written."
            )
            return 1
        last = entries[-1].hash if entries else "none"
        print(f"The audit log is intact: {len(entries):,} entries, latest hash {last}.")
        return 0
    entries = governance.audit_log(args.actor)
    if args.json:
        print(json.dumps([e.__dict__ for e in entries], indent=2, default=str))
    elif not entries:
        print("No audit entries.")
    for entry in [] if args.json else entries:
        print(
            f"{entry.id:>6}  {entry.ts}  {entry.actor:20} {entry.action:26} {entry.target}  {json.dumps(entry.details)}"
        )
    return 0


def _limit(text: str) -> dict[str, Any]:
    """`calls=600,key=user_group,principal=analysts` as a rate limit entry."""
    entry: dict[str, Any] = {}
    for part in text.split(","):
        name, sep, value = part.partition("=")
        if not sep or not name.strip():
            raise AifuncsError(
                f"--limit {text!r}: write FIELD=VALUE,..., e.g. --limit calls=600,key=endpoint."
            )
        entry[name.strip()] = int(value) if value.strip().isdigit() else value.strip()
    return entry


def _gateway(args: argparse.Namespace) -> int:
    from aifuncs import catalog

    if args.command == "rate-limits":
        if args.action == "set":
            limits = [_limit(text) for text in args.limit or []]
            result: Any = catalog.set_rate_limits(args.endpoint, limits)
        else:
            result = catalog.get_ai_gateway(args.endpoint)["rate_limits"]
        if args.json:
            print(json.dumps(result, indent=2))
        elif not result:
            print(f"No rate limits on {args.endpoint!r}.")
        for limit in [] if args.json else result:
            amounts = ", ".join(f"{limit[u]:,} {u}/min" for u in ("calls", "tokens") if u in limit)
            print(f"{limit['key']:18} {limit.get('principal', ''):24} {amounts}")
        return 0
    if args.action == "fallback":
        return _fallback(args)
    if args.action == "put":
        try:
            config = json.loads(args.config)
        except json.JSONDecodeError as error:
            raise AifuncsError(
                f"The configuration is not JSON: {error.msg} at character {error.pos}."
            ) from None
        result = catalog.put_ai_gateway(args.endpoint, config)
    else:
        result = catalog.get_ai_gateway(args.endpoint)
    print(json.dumps(result, indent=2))
    return 0


def _fallback(args: argparse.Namespace) -> int:
    """`aifuncs gateway fallback NAME`: show, or change, fallback_config and keep the other settings."""
    from aifuncs import catalog
    from aifuncs.cli._entities import fallback_text

    if args.endpoint_to and args.disable:
        raise AifuncsError("--to names where a request falls back to: give it with --enable, not --disable.")
    config = catalog.get_ai_gateway(args.endpoint)
    if args.enable or args.disable:
        fallback = {
            "enabled": bool(args.enable),
            **({"endpoint": args.endpoint_to} if args.endpoint_to else {}),
        }
        config = catalog.put_ai_gateway(args.endpoint, {**config, "fallback_config": fallback})
    elif args.endpoint_to:
        raise AifuncsError(
            f"--to {args.endpoint_to!r} goes with --enable: a fallback endpoint is asked when on."
        )
    shown = config.get("fallback_config") or {"enabled": False}
    if args.json:
        print(json.dumps(shown, indent=2))
        return 0
    entities = [e.name for e in catalog.get(args.endpoint).served_entities()]
    print(f"Fallback of {args.endpoint!r}: {fallback_text(shown, entities)}")
    return 0


def _keys(args: argparse.Namespace) -> int:
    from aifuncs import governance
    from aifuncs.governance.keys import fingerprint, key_from_environment, read_key_file

    if args.action == "generate":
        print(governance.generate_key())
        print("A new 256-bit key. Keep it in a file only you can read (chmod 600) and point"
              " AIFUNCS_ENCRYPTION_KEY_FILE at it, or set AIFUNCS_ENCRYPTION_KEY.", file=sys.stderr)  # fmt: skip
    elif args.action == "status":
        key = key_from_environment()
        print("no encryption key: payloads and kept answers are stored in clear" if key is None
              else f"encryption on: key fingerprint {fingerprint(key)}")  # fmt: skip
    else:
        new_key = read_key_file(Path(args.new_key_file))
        count = governance.rotate_key(new_key)
        print(f"Rewrapped {count} data key(s) under the key of fingerprint {fingerprint(new_key)}. Point"
              " AIFUNCS_ENCRYPTION_KEY_FILE (or AIFUNCS_ENCRYPTION_KEY) at the new key now: the old one opens nothing.")  # fmt: skip
    return 0


def add_commands(commands: Any) -> None:
    """Register the governance commands on the main parser's subparsers."""
    whoami = commands.add_parser("whoami", help="the principal this process acts as")
    whoami.add_argument("--json", action="store_true")
    whoami.set_defaults(handler=_whoami)

    for command, kind in _KINDS.items():
        label = kind.replace("_", " ")
        parser = commands.add_parser(command, help=f"manage {label}s (admins)")
        actions = parser.add_subparsers(dest="action", required=True)
        actions.add_parser("list", help=f"every {label}").add_argument("--json", action="store_true")
        create = actions.add_parser("create", help=f"add a {label}")
        create.add_argument("name")
        if kind == "group":
            create.add_argument("--member", action="append", metavar="NAME", help="a member (repeatable)")
            for verb in ("add-member", "remove-member"):
                change = actions.add_parser(verb, help=f"{verb.split('-')[0]} a member")
                change.add_argument("name", help="the group")
                change.add_argument("member")
            actions.add_parser("members", help="a group's direct members").add_argument("name")
        else:
            create.add_argument("--admin", action="store_true", help="CAN_MANAGE on every endpoint")
        actions.add_parser("delete", help=f"remove a {label}").add_argument("name")
        add_entitlement_actions(actions)
        parser.set_defaults(handler=_principals)

    tokens = commands.add_parser("tokens", help="access tokens (set AIFUNCS_TOKEN to act as one)")
    token_actions = tokens.add_subparsers(dest="action", required=True)
    create_token = token_actions.add_parser("create", help="make a token; prints it once")
    create_token.add_argument("--for", dest="principal", metavar="NAME", help="whose (default: yours)")
    create_token.add_argument("--days", type=int, default=90, help="lifetime in days (90)")
    create_token.add_argument("--no-expiry", action="store_true")
    create_token.add_argument("--comment")
    list_tokens = token_actions.add_parser("list", help="tokens, never their secrets")
    list_tokens.add_argument("--for", dest="principal", metavar="NAME")
    list_tokens.add_argument("--json", action="store_true")
    token_actions.add_parser("revoke", help="revoke a token by id").add_argument("id", type=int)
    tokens.set_defaults(handler=_tokens)

    permissions = commands.add_parser("permissions", help="who may view, query or manage an endpoint")
    permission_actions = permissions.add_subparsers(dest="action", required=True)
    get = permission_actions.add_parser("get", help="the endpoint's access control list")
    get.add_argument("endpoint")
    get.add_argument("--json", action="store_true")
    for verb, helptext in (("set", "replace every grant"), ("update", "add or change grants")):
        change = permission_actions.add_parser(verb, help=helptext)
        change.add_argument("endpoint")
        for kind in _GRANT_FLAGS:
            flag = kind.replace("_", "-")
            change.add_argument(
                f"--{flag}", dest=kind, action="append", metavar="NAME=LEVEL",
                help=f"a {kind.replace('_', ' ')}'s level: CAN_VIEW, CAN_QUERY or CAN_MANAGE",
            )  # fmt: skip
        change.add_argument("--acl", metavar="JSON", help="Databricks' access_control_list as JSON")
        change.add_argument("--json", action="store_true")
    permissions.set_defaults(handler=_permissions)

    audit = commands.add_parser(
        "audit", help="the log of every change to principals, tokens, grants and limits"
    )
    audit_actions = audit.add_subparsers(dest="action", required=True)
    audit_list = audit_actions.add_parser(
        "list", help="entries, oldest first (yours, or everyone's for an admin)"
    )
    audit_list.add_argument("--actor", metavar="NAME", help="only this principal's changes")
    audit_list.add_argument("--json", action="store_true")
    audit_actions.add_parser("verify", help="check the hash chain; prints the latest hash")
    audit.set_defaults(handler=_audit)

    gateway = commands.add_parser(
        "gateway", help="an endpoint's AI gateway: rate limits, guardrails, inference table, fallbacks"
    )
    gateway_actions = gateway.add_subparsers(dest="action", required=True)
    gateway_actions.add_parser("get", help="the configuration, as JSON").add_argument("endpoint")
    put = gateway_actions.add_parser("put", help="replace the configuration (needs CAN_MANAGE)")
    put.add_argument("endpoint")
    put.add_argument("config", help='JSON, e.g. \'{"rate_limits": [{"calls": 600, "key": "endpoint"}]}\'')
    fallback = gateway_actions.add_parser(
        "fallback", help="show or set fallback_config: where a request its served entity failed goes next"
    )
    fallback.add_argument("endpoint")
    switch = fallback.add_mutually_exclusive_group()
    switch.add_argument("--enable", action="store_true", help="ask the other entities, then --to, on failure")
    switch.add_argument("--disable", action="store_true", help="a request its entity failed fails")
    fallback.add_argument(
        "--to",
        dest="endpoint_to",
        metavar="ENDPOINT",
        help="another endpoint to ask last (needs CAN_QUERY on it)",
    )
    fallback.add_argument("--json", action="store_true")
    gateway.set_defaults(handler=_gateway)

    rate_limits = commands.add_parser("rate-limits", help="an endpoint's rate limits")
    limit_actions = rate_limits.add_subparsers(dest="action", required=True)
    for verb, helptext in (("get", "the limits"), ("set", "replace the limits (none given: remove them)")):
        sub = limit_actions.add_parser(verb, help=helptext)
        sub.add_argument("endpoint")
        sub.add_argument("--json", action="store_true")
        if verb == "set":
            sub.add_argument("--limit", action="append", metavar="FIELD=VALUE,...",
                             help="e.g. calls=600,key=endpoint or tokens=50000,key=user_group,principal=analysts")  # fmt: skip
    rate_limits.set_defaults(handler=_gateway)

    keys = commands.add_parser("keys", help="the encryption key of payloads and kept answers")
    key_actions = keys.add_subparsers(dest="action", required=True)
    key_actions.add_parser("generate", help="print a new random 256-bit key")
    key_actions.add_parser("status", help="whether a key is configured, and its fingerprint")
    rotate = key_actions.add_parser("rotate", help="rewrap the data keys under a new key (admins)")
    rotate.add_argument(
        "--new-key-file", required=True, metavar="PATH", help="the new key, in a file of mode 600"
    )
    keys.set_defaults(handler=_keys)
    add_secret_commands(commands)
