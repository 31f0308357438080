"""Databricks' served entities to catalog endpoints: a registered MLflow model is an `mlflow` endpoint, an
external model the matching remote kind.

Keys are never stored: an external model's key is a secret scope's key, `"openai_api_key":
"{{secrets/scope/key}}"` (saving it needs READ on the scope), or, for admins only, an environment variable
of the server, `"{{env/NAME}}"` (or `openai_api_key_env`; never an `AIFUNCS_*` one); a `*_plaintext` key is
refused. GET shows the reference back (`key_references`). Serving fields Databricks needs for its own
machines (`workload_size`, `scale_to_zero_enabled`, `environment_vars`...) are accepted and have no effect
here.
"""

from __future__ import annotations

import re
from typing import Any

from aifuncs.server._errors import ApiError

__all__ = ["endpoint_config", "key_references"]

_TASKS = {"llm/v1/chat": "chat", "llm/v1/completions": "completions", "llm/v1/embeddings": "embeddings"}
_REFERENCE = re.compile(r"^\{\{\s*(env|secrets)/([A-Za-z0-9_.-]+)(?:/([A-Za-z0-9_.-]+))?\s*\}\}$")


def _bad(message: str) -> ApiError:
    return ApiError(400, "INVALID_PARAMETER_VALUE", message)


def _key(config: dict[str, Any], field: str) -> dict[str, str]:
    """Where an external model's key is read from: {"api_key_secret": "scope/key"} or {"api_key_env": NAME}
    (the catalog checks that the config's author may use it)."""
    if config.get(f"{field}_plaintext"):
        raise _bad(
            f"{field}_plaintext: aifuncs never stores keys. Put the key in a secret scope and reference it:"
            f' "{field}": "{{{{secrets/SCOPE/KEY}}}}".'
        )
    if config.get(f"{field}_env"):
        return {"api_key_env": str(config[f"{field}_env"])}
    value = config.get(field)
    if value is None:
        return {}
    found = _REFERENCE.match(str(value))
    if found is None:
        raise _bad(
            f'{field} names where the key is, e.g. "{{{{secrets/SCOPE/KEY}}}}"; the key itself is never sent or'
            " stored."
        )
    kind, first, second = found.groups()
    if kind == "env":
        if second is not None:
            raise _bad(f"{field}: an environment reference reads {{{{env/NAME}}}}.")
        return {"api_key_env": first}
    if second is None:
        raise _bad(f"{field}: a secret reference reads {{{{secrets/scope/key}}}}.")
    return {"api_key_secret": f"{first}/{second}"}


_KEY_FIELDS = {
    "openai": ("openai_config", "openai_api_key"),
    "anthropic": ("anthropic_config", "anthropic_api_key"),
    "serving": ("databricks_model_serving_config", "databricks_api_token"),
}


def key_references(kind: str, options: dict[str, Any]) -> dict[str, Any]:
    """The key reference an external model's options hold, in its provider config as GET shows it, e.g.
    {"openai_config": {"openai_api_key": "{{secrets/llm/openai}}"}}: never a value."""
    if options.get("api_key_secret"):
        reference = f"{{{{secrets/{options['api_key_secret']}}}}}"
    elif options.get("api_key_env"):
        reference = f"{{{{env/{options['api_key_env']}}}}}"
    else:
        return {}
    section, field = _KEY_FIELDS.get(kind, ("openai_config", "openai_api_key"))
    return {section: {field: reference}}


def _external(model: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    provider = model.get("provider")
    name = model.get("name")
    if not isinstance(name, str) or not name:
        raise _bad("external_model.name is the model's name at its provider.")
    task = _TASKS.get(str(model.get("task", "llm/v1/chat")))
    if task is None:
        raise _bad(f"external_model.task is one of {', '.join(_TASKS)}.")
    if provider in ("openai", "custom"):
        config = model.get("openai_config") or model.get("custom_provider_config") or {}
        options: dict[str, Any] = {"model": name, "task": task}
        base = config.get("openai_api_base") or config.get("custom_provider_url")
        if base:
            options["base_url"] = str(base).rstrip("/")
        return "openai", {**options, **_key(config, "openai_api_key")}
    if provider == "anthropic":
        if task != "chat":
            raise _bad("Anthropic serves llm/v1/chat only.")
        config = model.get("anthropic_config") or {}
        return "anthropic", {"model": name, **_key(config, "anthropic_api_key")}
    if provider == "databricks-model-serving":
        config = model.get("databricks_model_serving_config") or {}
        host = str(config.get("databricks_workspace_url", "")).rstrip("/")
        if not host:
            raise _bad(
                "databricks_model_serving_config.databricks_workspace_url is the workspace that serves it."
            )
        url = f"{host}/serving-endpoints/{name}/invocations"
        return "serving", {"url": url, **_key(config, "databricks_api_token")}
    raise _bad(
        f"external_model.provider {provider!r} is not served here: openai, custom, anthropic, databricks-model-serving."
    )


def _entity(entity: Any) -> tuple[str, dict[str, Any]]:
    """One served entity's catalog kind and options."""
    if not isinstance(entity, dict):
        raise _bad("Each served entity is an object: entity_name and entity_version, or an external_model.")
    if entity.get("external_model") is not None:
        if not isinstance(entity["external_model"], dict):
            raise _bad("external_model is an object: name, provider, task and the provider's config.")
        kind, options = _external(entity["external_model"])
    else:
        name = entity.get("entity_name") or entity.get("model_name")
        version = entity.get("entity_version") or entity.get("model_version")
        if not name or not version:
            raise _bad(
                "A served entity names a registered model (entity_name and entity_version) or an external_model."
            )
        kind, options = "mlflow", {"model_uri": f"models:/{name}/{version}"}
        # How `aifuncs serve` runs the model's workers (an external model has none)
        for field in ("workload_size", "scale_to_zero_enabled"):
            if entity.get(field) is not None:
                options[field] = entity[field]
    return kind, {k: v for k, v in options.items() if v is not None}


def _entity_name(entity: dict[str, Any]) -> str:
    """The entity's name as Databricks makes it when none is given: the model's name (and version)."""
    if isinstance(entity.get("name"), str) and entity["name"]:
        return str(entity["name"])
    external = entity.get("external_model")
    if isinstance(external, dict) and external.get("name"):
        return str(external["name"])
    name = entity.get("entity_name") or entity.get("model_name") or ""
    version = entity.get("entity_version") or entity.get("model_version") or ""
    return f"{name}-{version}".replace("/", "_").replace(".", "_")


def endpoint_config(config: Any) -> dict[str, Any]:
    """A config's served entities as catalog arguments: `kind` and options for one entity (an endpoint of
    one model, as before), `served_entities` with their traffic percentages (`traffic_config.routes`) for
    several."""
    if not isinstance(config, dict):
        raise _bad("config is an object with served_entities.")
    entities = config.get("served_entities") or config.get("served_models")
    if not isinstance(entities, list) or not entities:
        raise _bad("Give config.served_entities: a list of 1 to 10 served entities.")
    routes = (
        (config.get("traffic_config") or {}).get("routes")
        if isinstance(config.get("traffic_config"), dict)
        else None
    )
    if len(entities) == 1 and not routes:
        kind, options = _entity(entities[0])
        return {"kind": kind, **options}
    names = [_entity_name(e) if isinstance(e, dict) else "" for e in entities]
    shares = _shares(names, routes)
    served = []
    for entity, name in zip(entities, names, strict=True):
        kind, options = _entity(entity)
        served.append({"name": name, "kind": kind, "options": options, "traffic_percentage": shares[name]})
    return {"served_entities": served}


def _shares(names: list[str], routes: Any) -> dict[str, Any]:
    """Each entity's traffic percentage from `traffic_config.routes` (the catalog checks the sum)."""
    if routes is None:
        if len(names) == 1:
            return {names[0]: 100}
        raise _bad(
            "An endpoint of several served entities needs traffic_config.routes: each entity's"
            " served_entity_name and traffic_percentage, summing to 100 (0 for a fallback only)."
        )
    if not isinstance(routes, list) or not all(isinstance(r, dict) for r in routes):
        raise _bad("traffic_config.routes is a list of {served_entity_name, traffic_percentage}.")
    shares: dict[str, Any] = {}
    for route in routes:
        name = route.get("served_entity_name") or route.get("served_model_name")
        if name not in names:
            raise _bad(
                f"traffic_config.routes names {name!r}, which is not a served entity of this config"
                f" ({', '.join(names)})."
            )
        if name in shares:
            raise _bad(f"traffic_config.routes names {name!r} twice.")
        shares[name] = route.get("traffic_percentage")
    for name in names:
        shares.setdefault(name, 0)  # not routed: serves as a fallback only
    return shares
