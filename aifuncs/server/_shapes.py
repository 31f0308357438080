"""Catalog endpoints in the shape of Databricks' serving-endpoint object."""

from __future__ import annotations

from typing import Any

from aifuncs.catalog import Catalog, Endpoint
from aifuncs.server._entities import key_references
from aifuncs.workers import ModelWorkers

__all__ = ["endpoint_object"]

_REMOTE_PROVIDERS = {"openai": "openai", "anthropic": "anthropic", "serving": "databricks-model-serving"}


def _ms(endpoint: Endpoint, which: str) -> int | None:
    stamp = getattr(endpoint, which)
    return None if stamp is None else int(stamp.timestamp() * 1000)


def served_entity(endpoint: Endpoint, workers: ModelWorkers | None = None) -> dict[str, Any]:
    """A served entity (an endpoint of one model, or one entity's view): a registered model, an external
    model, or a local one, with its deployment state where model workers run it."""
    deployment = workers.deployment(endpoint) if workers is not None else None
    state, message = deployment or ("DEPLOYMENT_READY", "")
    entity: dict[str, Any] = {
        "name": endpoint.entity_name,
        "state": {"deployment": state, "deployment_state_message": message},
    }
    uri = str(endpoint.options.get("model_uri", ""))
    if endpoint.kind == "mlflow" and uri.startswith("models:/"):
        name, _, version = uri.removeprefix("models:/").partition("/")
        entity.update(entity_name=name, entity_version=version)
    elif endpoint.kind in _REMOTE_PROVIDERS:
        entity["external_model"] = {
            "name": endpoint.options.get("model") or endpoint.options.get("endpoint") or endpoint.name,
            "provider": _REMOTE_PROVIDERS[endpoint.kind],
            "task": f"llm/v1/{endpoint.options.get('task', 'chat')}",
            **key_references(endpoint.kind, endpoint.options),  # the reference, never the key
        }
    else:
        entity.update(entity_name=endpoint.name, entity_version=str(endpoint.version))
    return entity


def endpoint_object(
    catalog: Catalog, endpoint: Endpoint, permission_level: str | None, workers: ModelWorkers | None = None
) -> dict[str, Any]:
    config = _config(endpoint, workers)
    ready = all(e["state"]["deployment"] == "DEPLOYMENT_READY" for e in config["served_entities"])
    state = {"ready": "READY" if ready else "NOT_READY", "config_update": "NOT_UPDATING"}
    shown: dict[str, Any] = {
        "id": endpoint.name,  # names are unique: the permissions API keys on this id
        "name": endpoint.name,
        "creator": None,
        "creation_timestamp": _ms(endpoint, "created_at"),
        "last_updated_timestamp": _ms(endpoint, "updated_at"),
        "state": state,
        "config": config,
        "ai_gateway": catalog.get_ai_gateway(endpoint.name),
        "tags": catalog.tags(endpoint.name),
        "description": endpoint.description,
        "permission_level": permission_level,
    }
    pending = catalog.pending(endpoint.name)
    if pending is not None:
        state["config_update"] = pending.state
        shown["pending_config"] = {
            **_config(pending.endpoint, workers),
            "start_time": pending.requested_at,
            **({"state_message": pending.message} if pending.message else {}),
        }
    return shown


def _config(endpoint: Endpoint, workers: ModelWorkers | None) -> dict[str, Any]:
    entities = endpoint.served_entities()
    return {
        "config_version": endpoint.version,
        "served_entities": [served_entity(endpoint.served_entity(e.name), workers) for e in entities],
        "traffic_config": {
            "routes": [
                {"served_entity_name": e.name, "traffic_percentage": e.traffic_percentage} for e in entities
            ]
        },
    }
