"""The management routes: endpoints (list, get, create, config, delete), their AI gateway, rate limits, tags,
metrics and OpenAPI document, their permissions, and OpenAI's model list; each sees the catalog as the caller
(the request's `Session.catalog`), so it asks the same policy check as SQL."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from aifuncs._types import json_schema, to_duckdb_type
from aifuncs.catalog import Catalog
from aifuncs.governance.permissions import DESCRIPTIONS, LEVELS
from aifuncs.server._entities import endpoint_config
from aifuncs.server._errors import ApiError
from aifuncs.server._shapes import endpoint_object
from aifuncs.session import Session


def _level(catalog: Catalog, name: str) -> str | None:
    return catalog.permission_level(name)


def list_endpoints(request: Request, session: Session, body: Any) -> dict[str, Any]:
    catalog = session.catalog
    workers = getattr(request.app.state, "model_workers", None)
    return {
        "endpoints": [endpoint_object(catalog, e, _level(catalog, e.name), workers) for e in catalog.list()]
    }


def get_endpoint(request: Request, session: Session, body: Any) -> dict[str, Any]:
    catalog = session.catalog
    endpoint = catalog.get(request.path_params["name"])
    workers = getattr(request.app.state, "model_workers", None)
    return endpoint_object(catalog, endpoint, _level(catalog, endpoint.name), workers)


def create_endpoint(request: Request, session: Session, body: Any) -> dict[str, Any]:
    """POST: the endpoint, its creator's CAN_MANAGE, and its AI gateway settings, all or nothing."""
    if not isinstance(body, dict) or not isinstance(body.get("name"), str):
        raise ApiError(400, "INVALID_PARAMETER_VALUE", "Give the endpoint's name and config.")
    name = body["name"]
    config = endpoint_config(body.get("config"))
    catalog = session.catalog
    gateway = dict(body.get("ai_gateway") or {})
    gateway.pop("usage_tracking_config", None)  # always tracked here
    if body.get("rate_limits"):
        gateway.setdefault("rate_limits", body["rate_limits"])
    endpoint = catalog.create(name, description=str(body.get("description") or ""), **config)
    try:
        if gateway:
            catalog.put_ai_gateway(endpoint.name, gateway)
        if body.get("tags"):
            catalog.patch_tags(endpoint.name, add_tags=body["tags"])
    except BaseException:
        catalog.delete(endpoint.name)  # a create that cannot be whole leaves nothing behind
        raise
    return endpoint_object(catalog, endpoint, _level(catalog, endpoint.name))


def delete_endpoint(request: Request, session: Session, body: Any) -> dict[str, Any]:
    session.catalog.delete(request.path_params["name"])
    return {}


def put_ai_gateway(request: Request, session: Session, body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise ApiError(400, "INVALID_PARAMETER_VALUE", "The AI gateway configuration is a JSON object.")
    config = {k: v for k, v in body.items() if k != "name"}
    usage = config.pop("usage_tracking_config", None)
    if usage is not None and usage != {"enabled": True}:
        raise ApiError(
            400,
            "INVALID_PARAMETER_VALUE",
            'Usage is always tracked here: send {"enabled": true} or leave it out.',
        )
    return session.catalog.put_ai_gateway(request.path_params["name"], config)


def put_rate_limits(request: Request, session: Session, body: Any) -> dict[str, Any]:
    limits = body.get("rate_limits", []) if isinstance(body, dict) else None
    return {"rate_limits": session.catalog.set_rate_limits(request.path_params["name"], limits)}  # type: ignore[arg-type]


def patch_tags(request: Request, session: Session, body: Any) -> dict[str, Any]:
    body = body if isinstance(body, dict) else {}
    tags = session.catalog.patch_tags(
        request.path_params["name"], body.get("add_tags"), body.get("delete_tags")
    )
    return {"tags": tags}


def metrics(request: Request, session: Session, body: Any) -> Response:
    """OpenMetrics counters of the endpoint's requests, from the usage log (every process's)."""
    endpoint = session.catalog.authorize(request.path_params["name"], "view")
    rows = [
        r
        for r in session.runtime.usage.read()
        if r["endpoint"] == endpoint.name
        and r["status"] != "guardrail"
        # rows of an earlier endpoint of this name are not this one's
        and (endpoint.created_at is None or datetime.fromisoformat(r["ts"]) >= endpoint.created_at)
    ]
    codes = [r["status_code"] or (200 if r["status"] == "ok" else 500) for r in rows]
    label = f'{{endpoint="{endpoint.name}"}}'
    lines = [
        "# TYPE request_count counter", f"request_count_total{label} {len(rows)}",
        "# TYPE request_4xx_count counter", f"request_4xx_count_total{label} {sum(400 <= c < 500 for c in codes)}",
        "# TYPE request_5xx_count counter", f"request_5xx_count_total{label} {sum(c >= 500 for c in codes)}",
        "# TYPE request_latency_ms summary",
        f"request_latency_ms_sum{label} {sum(r['latency_ms'] or 0 for r in rows):.3f}",
        f"request_latency_ms_count{label} {len(rows)}",
        "# TYPE input_tokens counter", f"input_tokens_total{label} {sum(r['input_tokens'] or 0 for r in rows)}",
        "# TYPE output_tokens counter", f"output_tokens_total{label} {sum(r['output_tokens'] or 0 for r in rows)}",
        "# EOF",
    ]  # fmt: skip
    return Response(
        "\n".join(lines) + "\n", media_type="application/openmetrics-text; version=1.0.0; charset=utf-8"
    )


def endpoint_openapi(request: Request, session: Session, body: Any) -> dict[str, Any]:
    """The OpenAPI document of one endpoint's query: its inputs (from the model's signature) and answers."""
    endpoint = session.catalog.authorize(request.path_params["name"], "view")
    provider = session.runtime.provider(endpoint)
    if provider.returns_text:
        message = {"type": "object", "properties": {"role": {"type": "string"}, "content": {"type": "string"}},
                   "required": ["role", "content"]}  # fmt: skip
        request_schema: dict[str, Any] = {
            "type": "object",
            "properties": {
                "messages": {"type": "array", "items": message},
                "max_tokens": {"type": "integer"},
                "temperature": {"type": "number"},
                "stream": {"type": "boolean"},
            },  # fmt: skip
            "required": ["messages"],
        }
        answer: dict[str, Any] = {"type": "object", "properties": {"choices": {"type": "array"}}}
    else:
        columns = provider.input_columns() or []
        row = {
            "type": "object",
            "properties": {c.name: json_schema(c.type) for c in columns},
            "required": [c.name for c in columns if c.required],
        }
        request_schema = {"type": "object", "properties": {"dataframe_records": {"type": "array", "items": row},
                                                            "inputs": {"type": "array"}}}  # fmt: skip
        output = provider.output_type()
        item = json_schema(to_duckdb_type(output)) if output else {}
        answer = {"type": "object", "properties": {"predictions": {"type": "array", "items": item}}}
    operation = {
        "requestBody": {"content": {"application/json": {"schema": request_schema}}},
        "responses": {
            "200": {"description": "The answers", "content": {"application/json": {"schema": answer}}}
        },
        "security": [{"bearer": []}],
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": endpoint.name,
            "version": str(endpoint.version),
            "description": endpoint.description,
        },
        "components": {"securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
        "paths": {f"/serving-endpoints/{endpoint.name}/invocations": {"post": operation}},
    }


def permissions(request: Request, session: Session, body: Any) -> dict[str, Any]:
    catalog = session.catalog
    name = request.path_params["endpoint_id"]
    if request.method == "GET":
        return catalog.get_permissions(name)
    entries = body.get("access_control_list") if isinstance(body, dict) else None
    if not isinstance(entries, list):
        raise ApiError(400, "INVALID_PARAMETER_VALUE", 'Send {"access_control_list": [...]}.')
    change = catalog.set_permissions if request.method == "PUT" else catalog.update_permissions
    return change(name, entries)


def permission_levels(request: Request, session: Session, body: Any) -> dict[str, Any]:
    session.catalog.authorize(request.path_params["endpoint_id"], "view")
    return {
        "permission_levels": [
            {"permission_level": level, "description": DESCRIPTIONS[level]} for level in LEVELS
        ]
    }


def models(request: Request, session: Session, body: Any) -> dict[str, Any]:
    endpoints = session.catalog.list()
    return {"object": "list", "data": [
        {"id": e.name, "object": "model", "owned_by": "aifuncs",
         "created": int(e.created_at.timestamp()) if e.created_at else 0} for e in endpoints]}  # fmt: skip
