"""Catalog endpoints in the shape of Databricks' serving-endpoint object."""

from __future__ import annotations

from typing import Any

from aifuncs.catalog import Catalog, Endpoint
from aifuncs.server._entities import key_references

__all__ = ["endpoint_object"]

_REMOTE_PROVIDERS = {"openai": "openai", "anthropic": "anthropic", "serving": "databricks-model-serving"}


def _ms(endpoint: Endpoint, which: str) -> int | None:
    stamp = getattr(endpoint, which)
    return None if stamp is None else int(stamp.timestamp() * 1000)


def served_entity(endpoint: Endpoint) -> dict[str, Any]:
    """A served entity (an endpoint of one model, or one entity's view): a registered model, an external
    model, or a local one."""
    entity: dict[str, Any] = {
        "name": endpoint.entity_name,
        "state": {"deployment": "DEPLOYMENT_READY", "deployment_state_message": ""},
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


def endpoint_object(catalog: Catalog, endpoint: Endpoint, permission_level: str | None) -> dict[str, Any]:
    entities = endpoint.served_entities()
    return {
        "id": endpoint.name,  # names are unique: the permissions API keys on this id
        "name": endpoint.name,
        "creator": None,
        "creation_timestamp": _ms(endpoint, "created_at"),
        "last_updated_timestamp": _ms(endpoint, "updated_at"),
        "state": {"ready": "READY", "config_update": "NOT_UPDATING"},
        "config": {
            "config_version": endpoint.version,
            "served_entities": [served_entity(endpoint.served_entity(e.name)) for e in entities],
            "traffic_config": {
                "routes": [
                    {"served_entity_name": e.name, "traffic_percentage": e.traffic_percentage}
                    for e in entities
                ]
            },
        },
        "ai_gateway": catalog.get_ai_gateway(endpoint.name),
        "tags": catalog.tags(endpoint.name),
        "description": endpoint.description,
        "permission_level": permission_level,
    }
