"""What the author of an endpoint config may put in it: checked on every create and every change.

A config runs with its author's rights for everyone who queries it, so what it may reach is decided by who
saved it:
- keys: `api_key_secret="scope/key"` needs READ on the scope (the scope and key must exist); naming a
  server's environment variable (`api_key_env`) is for admins, and nobody may name an `AIFUNCS_*` one;
- in-process code and files (`python`; `mlflow` other than a `models:/` URI on the default registry;
  `llama_cpp`'s model_path; `sentence_transformers`' model): admins only;
- hosts: a non-admin's remote endpoint may reach only the egress allow-list's hosts, checked now and on
  each request (`egress_checked` is set on the options it saves; an admin's save clears it).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from aifuncs.errors import PermissionDenied
from aifuncs.governance.egress import EgressPolicy
from aifuncs.governance.keys import keyring
from aifuncs.governance.principals import Principal
from aifuncs.governance.secrets import Secrets, check_env_name, parse_reference
from aifuncs.providers import provider_class
from aifuncs.providers._http import HttpProvider

__all__ = ["authored"]

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
    if principal.admin:
        return options
    _in_process(principal, kind, options)
    provider = provider_class(kind)
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
    elif kind == "mlflow" and not str(options.get("model_uri", "")).startswith("models:/"):
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
