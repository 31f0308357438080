"""`aifuncs secrets ...` (secret scopes, keys and ACLs), `aifuncs egress ...` (the allow-list of hosts that
non-admins' endpoints may reach) and `aifuncs users|groups|service-principals entitle|unentitle|entitlements`.

Each acts as the process's identity and goes through the same checks as the server's routes. A value is read
from a file or standard input, never from the command line (where shell history and `ps` would keep it).
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
from pathlib import Path
from typing import Any

from aifuncs.errors import AifuncsError

__all__ = ["add_entitlement_actions", "add_secret_commands", "run_entitlements"]


def _secrets() -> Any:
    from aifuncs._home import home
    from aifuncs.governance import current
    from aifuncs.governance.keys import keyring
    from aifuncs.governance.secrets import Secrets

    return Secrets(home() / "catalog.db", current().principal, keyring())


def _show(rows: list[dict[str, Any]], as_json: bool, empty: str) -> None:
    if as_json:
        print(json.dumps(rows, indent=2))
    elif not rows:
        print(empty)
    for row in [] if as_json else rows:
        print("  ".join(str(v) for v in row.values()))


def _run_secrets(args: argparse.Namespace) -> int:
    secrets = _secrets()
    action = args.action
    if action == "create-scope":
        secrets.create_scope(
            args.scope, backend_type=args.backend, initial_manage_principal=args.initial_manage_principal
        )
        print(f"Created the secret scope {args.scope!r} ({args.backend}).")
    elif action == "list-scopes":
        _show(secrets.list_scopes(), args.json, "No secret scopes.")
    elif action == "delete-scope":
        secrets.delete_scope(args.scope)
        print(f"Deleted the secret scope {args.scope!r} with its keys and ACLs.")
    elif action == "put":
        if args.env:
            secrets.put(args.scope, args.key, environment_variable=args.env)
        else:
            raw = Path(args.value_file).read_bytes() if args.value_file else sys.stdin.buffer.read()
            value = raw.rstrip(b"\r\n") if not args.value_file else raw  # a typed value ends with Enter
            if not value:
                raise AifuncsError("No value given: pipe it in, or pass --value-file PATH.")
            secrets.put(args.scope, args.key, bytes_value=value)
        print(f"Stored {args.scope}/{args.key}; reference it as {{{{secrets/{args.scope}/{args.key}}}}}.")
    elif action == "delete":
        secrets.delete(args.scope, args.key)
        print(f"Deleted {args.scope}/{args.key}.")
    elif action == "list":
        _show(secrets.list(args.scope), args.json, f"No keys in {args.scope!r}.")
    elif action == "get":
        value = secrets.get(args.scope, args.key)
        print(base64.b64encode(value).decode() if args.base64 else value.decode("utf-8", "replace"))
    elif action == "put-acl":
        secrets.put_acl(args.scope, args.principal, args.permission)
        print(f"{args.principal} holds {args.permission.upper()} on {args.scope!r}.")
    elif action == "delete-acl":
        secrets.delete_acl(args.scope, args.principal)
        print(f"Removed {args.principal}'s ACL on {args.scope!r}.")
    else:
        _show(secrets.list_acls(args.scope), args.json, f"No ACLs on {args.scope!r}.")
    return 0


def _run_egress(args: argparse.Namespace) -> int:
    from aifuncs._home import home
    from aifuncs.governance import current
    from aifuncs.governance.egress import EgressPolicy

    policy = EgressPolicy(home() / "catalog.db")
    if args.action == "allow":
        print(f"Allowed {policy.allow(args.host, current().principal)}.")
    elif args.action == "disallow":
        print(f"Removed {policy.disallow(args.host, current().principal)}.")
    else:
        _show(
            [{"host": str(e)} for e in policy.list()],
            args.json,
            "No hosts allowed: non-admins' endpoints reach none.",
        )
    return 0


def run_entitlements(args: argparse.Namespace) -> int:
    from aifuncs import governance

    directory = governance.directory()
    if args.action == "entitle":
        directory.grant_entitlement(args.name, args.entitlement)
        print(f"{args.name} holds {args.entitlement}.")
    elif args.action == "unentitle":
        directory.revoke_entitlement(args.name, args.entitlement)
        print(f"{args.name} no longer holds {args.entitlement} (its groups' still count).")
    else:
        print("\n".join(directory.entitlements(args.name)) or f"{args.name} holds no entitlement of its own.")
    return 0


def add_entitlement_actions(actions: Any) -> None:
    """`entitle NAME [ENTITLEMENT]`, `unentitle ...`, `entitlements NAME` on a principal command."""
    from aifuncs.governance.principals import CREATE_ENDPOINTS, ENTITLEMENTS

    for verb, helptext in (
        ("entitle", "grant an entitlement (admins)"),
        ("unentitle", "revoke one (admins)"),
    ):
        change = actions.add_parser(verb, help=helptext)
        change.add_argument("name")
        change.add_argument("entitlement", nargs="?", default=CREATE_ENDPOINTS, choices=ENTITLEMENTS)
    actions.add_parser("entitlements", help="the entitlements granted to it").add_argument("name")


def add_secret_commands(commands: Any) -> None:
    secrets = commands.add_parser(
        "secrets", help="secret scopes: keys endpoints reference as {{secrets/scope/key}}"
    )
    actions = secrets.add_subparsers(dest="action", required=True)
    create = actions.add_parser("create-scope", help="a new scope (admins, or allow-secret-scope-create)")
    create.add_argument("scope")
    create.add_argument("--backend", default="DATABRICKS", choices=("DATABRICKS", "ENVIRONMENT"),
                        help="DATABRICKS: values sealed under the home's key; ENVIRONMENT: server variables (admins)")  # fmt: skip
    create.add_argument(
        "--initial-manage-principal", choices=("users",), help="users: everyone may manage it"
    )
    actions.add_parser("list-scopes", help="every scope").add_argument("--json", action="store_true")
    actions.add_parser("delete-scope", help="a scope with its keys (MANAGE)").add_argument("scope")
    put = actions.add_parser("put", help="store a value (stdin or --value-file) or bind --env NAME (WRITE)")
    put.add_argument("scope")
    put.add_argument("key")
    put.add_argument("--value-file", metavar="PATH")
    put.add_argument("--env", metavar="NAME", help="an ENVIRONMENT scope's variable (admins)")
    delete = actions.add_parser("delete", help="remove a key (WRITE)")
    delete.add_argument("scope")
    delete.add_argument("key")
    listing = actions.add_parser("list", help="a scope's keys, never values (READ)")
    listing.add_argument("scope")
    listing.add_argument("--json", action="store_true")
    get = actions.add_parser("get", help="print a value (READ)")
    get.add_argument("scope")
    get.add_argument("key")
    get.add_argument("--base64", action="store_true")
    put_acl = actions.add_parser("put-acl", help="grant READ, WRITE or MANAGE (MANAGE)")
    put_acl.add_argument("scope")
    put_acl.add_argument("principal", help="a user, group, service principal, or users (everyone)")
    put_acl.add_argument("permission", type=str.upper, choices=("READ", "WRITE", "MANAGE"))
    delete_acl = actions.add_parser("delete-acl", help="remove a principal's ACL (MANAGE)")
    delete_acl.add_argument("scope")
    delete_acl.add_argument("principal")
    list_acls = actions.add_parser("list-acls", help="a scope's ACLs (MANAGE)")
    list_acls.add_argument("scope")
    list_acls.add_argument("--json", action="store_true")
    secrets.set_defaults(handler=_run_secrets)

    egress = commands.add_parser("egress", help="hosts endpoints configured by non-admins may reach")
    egress_actions = egress.add_subparsers(dest="action", required=True)
    egress_actions.add_parser("list", help="the allow-list").add_argument("--json", action="store_true")
    for verb, helptext in (
        ("allow", "add a host, host:port, IP or network (admins)"),
        ("disallow", "remove one"),
    ):
        egress_actions.add_parser(verb, help=helptext).add_argument("host")
    egress.set_defaults(handler=_run_egress)
