"""What the author of an endpoint config may put in it: checked on every create and every change.

A config runs with its author's rights for everyone who queries it, so what it may reach is decided by who
saved it:
- keys: `api_key_secret="scope/key"` needs READ on the scope (the scope and key must exist); naming a
  server's environment variable (`api_key_env`) is for admins, and nobody may name an `AIFUNCS_*` one;
- in-process code and files (`python`; `mlflow` other than a `models:/` URI on the default registry;
  `llama_cpp`'s model_path; `sentence_transformers`' model): admins only;
- hosts: a non-admin's remote endpoint may reach only the egress allow-list's hosts, checked now and on
  each request (`egress_checked` is set on the options it saves: true for a non-admin, false for an admin).

A remote endpoint stored without the flag (saved before it was recorded) is checked too, unless the audit log
shows an admin (the home's owner or a stored admin) saved it last: `settle_unrecorded` writes that decision
once, when the catalog is opened.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from aifuncs.errors import PermissionDenied, UnknownProviderKind
from aifuncs.governance import _revision as revision
from aifuncs.governance._sqlite import transaction
from aifuncs.governance.audit import AuditLog
from aifuncs.governance.egress import EgressPolicy
from aifuncs.governance.keys import keyring
from aifuncs.governance.principals import Principal, owner_of
from aifuncs.governance.secrets import Secrets, check_env_name, parse_reference
from aifuncs.providers import provider_class
from aifuncs.providers._http import HttpProvider
from aifuncs.storage import Connection, shared

__all__ = ["authored", "settle_unrecorded"]

# A model of this server's own registry: models:/NAME/VERSION or models:/NAME@ALIAS (not models://PROFILE@HOST/...,
# another registry of the author's choosing).
_REGISTERED = re.compile(r"models:/[^/@:]+(/[0-9]+|/[A-Za-z]+|@[^/@:]+)")

EGRESS_FLAG = "egress_checked"
_URL_OPTIONS = ("base_url", "url")


def authored(path: Path, principal: Principal, kind: str, options: dict[str, Any]) -> dict[str, Any]:
    """`options` as `principal` may save them for an endpoint of `kind` (validated already); else
    PermissionDenied or ConfigError naming what is refused and what to do."""
    options = {k: v for k, v in options.items() if k != EGRESS_FLAG}
    for key, value in options.items():
        if key.endswith("_env") and value is not None:
            check_env_name(str(value))
            if not principal.admin:
                raise PermissionDenied(
                    f"{principal.name!r} may not name a server environment variable ({key}={value!r}): only an"
                    " admin may. Ask an admin for a secret scope and reference its key instead"
                    f" ({key.removesuffix('_env')}_secret='SCOPE/KEY', or \"{{{{secrets/SCOPE/KEY}}}}\" over REST)."
                )
        if key.endswith("_secret") and value is not None:
            Secrets(path, principal, keyring()).check_reference(parse_reference(value))
    provider = provider_class(kind)
    if principal.admin:
        if issubclass(provider, HttpProvider):
            options[EGRESS_FLAG] = False  # the record of an admin author: unrestricted
        return options
    _in_process(principal, kind, options)
    if issubclass(provider, HttpProvider):
        policy = EgressPolicy(path)
        parsed = provider.Options.model_validate(options)
        for field in _URL_OPTIONS:
            url = getattr(parsed, field, None)
            if isinstance(url, str):
                policy.check(url)
        options[EGRESS_FLAG] = True
    return options


def _in_process(principal: Principal, kind: str, options: dict[str, Any]) -> None:
    """Refuse what would run code or read files of the server's choosing, unless the author is an admin."""
    reason = None
    if kind == "python":
        reason = "a python endpoint runs any function of the server's Python"
    elif kind == "mlflow" and not _REGISTERED.fullmatch(str(options.get("model_uri", ""))):
        reason = "an mlflow endpoint other than a registered model (models:/NAME/VERSION) loads files of the server"
    elif kind == "mlflow" and options.get("tracking_uri"):
        reason = "an mlflow endpoint with its own tracking_uri reads a store of the author's choosing"
    elif kind == "llama_cpp" and options.get("model_path"):
        reason = "a llama_cpp endpoint's model_path loads a file of the server"
    elif kind == "sentence_transformers" and options.get("model"):
        reason = "a sentence_transformers endpoint's model loads a folder of the server"
    if reason is not None:
        raise PermissionDenied(
            f"{principal.name!r} may not save this {kind} endpoint: {reason}, so only an admin may. Use the"
            " built-in defaults or a registered model, or ask an admin to create it."
        )


def settle_unrecorded(path: Path) -> None:
    """Record the egress flag on remote endpoints stored without it: false where the audit log shows an admin
    saved the config last, true (checked) otherwise, so no config escapes the allow-list for want of a record.
    Only files written before the flag was kept lack it: a shared database's rows were all written with it."""
    if shared(path) is not None:
        return
    with transaction(path, "") as db:
        if not _table(db, "endpoints"):
            return
        rows = db.execute(
            "SELECT name, kind, options FROM endpoints WHERE json_extract(options, '$.egress_checked') IS NULL"
        ).fetchall()
        if not rows:
            return
        owner = owner_of(path.parent)
        checked: list[str] = []
        settled_any = False
        for name, kind, options in rows:
            try:
                remote = issubclass(provider_class(kind), HttpProvider)
            except UnknownProviderKind:
                continue
            if not remote:
                continue
            admin = _last_author_admin(db, name, owner)
            settled = json.dumps({**json.loads(options), EGRESS_FLAG: not admin}, sort_keys=True)
            db.execute(
                "UPDATE endpoints SET options = ? WHERE name = ? AND options = ?", (settled, name, options)
            )
            settled_any = True
            if not admin:
                checked.append(name)
        if settled_any:
            revision.bump(db)  # bindings made from the old options are made again
    for name in checked:
        AuditLog(path).record(
            "aifuncs", "endpoints.egress-checked", name, {"reason": "no admin author recorded"}
        )


def _table(db: Connection, name: str) -> bool:
    found = db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,)).fetchone()
    return found is not None


def _last_author_admin(db: Connection, endpoint: str, owner: str) -> bool:
    """Whether the audit log's last save of `endpoint`'s config was an admin's (the home's owner's included)."""
    if not _table(db, "audit"):
        return False
    row = db.execute(
        "SELECT actor FROM audit WHERE target = ? COLLATE NOCASE"
        " AND action IN ('endpoints.create', 'endpoints.update') ORDER BY id DESC LIMIT 1",
        (endpoint,),
    ).fetchone()
    if row is None:
        return False
    if row[0] == owner:
        return True
    admin = (
        _table(db, "principals")
        and db.execute("SELECT admin FROM principals WHERE name = ?", (row[0],)).fetchone()
    )
    return bool(admin and admin[0])
