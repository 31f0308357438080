"""Endpoints: the list (state, served entity, last 24 h's figures; create), and one endpoint's page (config and
versions, AI gateway settings, permissions, charts, usage by user, request log). Every change goes through the
catalog seen as the signed-in principal: the policy check the REST API asks."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, urlencode

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response

from aifuncs.catalog import Endpoint, ServedEntity
from aifuncs.catalog._authoring import EGRESS_FLAG
from aifuncs.catalog._entities import checked_entities
from aifuncs.errors import ConfigError
from aifuncs.governance.permissions import LEVELS
from aifuncs.governance.principals import CREATE_ENDPOINTS
from aifuncs.providers import provider_class
from aifuncs.runtime._rollups import Rollups
from aifuncs.server._errors import ApiError
from aifuncs.server._shapes import served_entity
from aifuncs.server.ui._logs import LogFilter, log_csv, log_detail, log_page, searchable
from aifuncs.server.ui._stats import breakdown, endpoint_totals, entity_breakdown, entity_series, series
from aifuncs.server.ui._web import Me, Ui, confirm_step, form_of, model_workers

__all__ = ["ROUTES"]

KINDS = (
    "openai",
    "anthropic",
    "serving",
    "http",
    "mlflow",
    "python",
    "llama_cpp",
    "sentence_transformers",
    "forecast",
    "document",
)
# Options the catalog sets itself (who authored the config): never shown, never changed from a form.
INTERNAL = frozenset({EGRESS_FLAG})
RANGES = {"6h": 6, "24h": 24, "7d": 168, "30d": 720}
TABS = ("overview", "gateway", "permissions", "logs", "usage")


def rollups(me: Me) -> Rollups:
    """The usage rollups, brought up to date (this process's pending rows written first)."""
    me.session.runtime.usage.flush()
    found = Rollups(me.home / "usage.db")
    found.refresh()
    return found


_STATES = {"DEPLOYMENT_READY": "Ready", "DEPLOYMENT_CREATING": "Loading", "DEPLOYMENT_FAILED": "Failed"}


def entities_of(endpoint: Endpoint, workers: Any = None) -> list[dict[str, Any]]:
    """Each served entity as the pages show it: name, kind, model, traffic percentage and state, in list
    order. The state is the server's model workers' for a model they run (loading, failed), else ready."""
    shown = []
    deployment = getattr(workers, "deployment", None)
    for entity in endpoint.served_entities():
        view = endpoint.served_entity(entity.name)
        shape = served_entity(view)
        external = shape.get("external_model")
        if external:
            model = f"{external['provider']} · {external['name']}"
        else:
            version = shape.get("entity_version")
            model = f"{shape.get('entity_name', entity.name)}{f' v{version}' if version else ''}"
        found = deployment(view) if deployment is not None else None
        state, message = found or (str(shape.get("state", {}).get("deployment", "")), "")
        shown.append(
            {
                "name": entity.name,
                "kind": entity.kind,
                "model": model,
                "traffic_percentage": entity.traffic_percentage,
                "state": _STATES.get(state, state.removeprefix("DEPLOYMENT_").title()),
                "state_message": message,
            }
        )
    return shown


def fallback_of(gateway: dict[str, Any]) -> dict[str, Any]:
    found = gateway.get("fallback_config") or {}
    return {"enabled": bool(found.get("enabled")), "endpoint": found.get("endpoint")}


def _json(text: str, what: str, default: Any) -> Any:
    text = text.strip()
    if not text:
        return default
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise ConfigError(
            f"{what} is not JSON: {error.msg} (line {error.lineno}, column {error.colno})."
        ) from None


def _task(kind: str, options: dict[str, Any]) -> str:
    try:
        returns_text = bool(getattr(provider_class(kind), "returns_text", False))
    except Exception:
        returns_text = False
    task = str(options.get("task") or "")
    return task or ("llm/v1/chat" if returns_text else "model")


def shown(options: dict[str, Any]) -> dict[str, Any]:
    """An endpoint's options as people edit them: without the catalog's own flags."""
    return {k: v for k, v in options.items() if k not in INTERNAL}


def _stamp(value: datetime | None) -> str:
    return "" if value is None else value.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


def _when(version: dict[str, Any]) -> str:
    """When a version was saved, as the page writes times (UTC, to the minute)."""
    text = str(version.get("updated_at") or version.get("created_at") or "")
    try:
        return _stamp(datetime.fromisoformat(text))
    except ValueError:
        return text


def list_page(ui: Ui, request: Request, me: Me) -> tuple[str, dict[str, Any]]:
    endpoints = me.catalog.list()
    totals = endpoint_totals(me, rollups(me))
    rows = [
        {
            "name": e.name,
            "kind": e.kind,
            "entities": entities_of(e, model_workers(request)),
            "fallback": fallback_of(me.catalog.get_ai_gateway(e.name)),
            "task": _task(e.kind, e.options),
            "version": e.version,
            "level": me.catalog.permission_level(e.name),
            "totals": totals.get(e.name),
            "updated": _stamp(e.updated_at),
        }
        for e in endpoints
    ]
    may_create = me.catalog._permissions.principals.entitled(me.principal, CREATE_ENDPOINTS)
    return "endpoints.html", {"rows": rows, "may_create": may_create, "kinds": KINDS}


async def create(ui: Ui, request: Request, me: Me) -> Response:
    form = await form_of(request)

    def work() -> str:
        options = _json(form.get("options", ""), "Options", {})
        if not isinstance(options, dict):
            raise ConfigError('Options are a JSON object, e.g. {"model": "gpt-4o-mini"}.')
        endpoint = me.catalog.create(
            form.get("name", "").strip(),
            form.get("kind", ""),
            description=form.get("description", ""),
            **options,
        )
        return endpoint.name

    name = await run_in_threadpool(work)
    return RedirectResponse(f"/ui/endpoints/{name}", 303)


def endpoint_page(ui: Ui, request: Request, me: Me) -> tuple[str, dict[str, Any]]:
    endpoint = me.catalog.get(request.path_params["name"])
    tab = request.query_params.get("tab", "overview")
    tab = tab if tab in TABS else "overview"
    level = me.catalog.permission_level(endpoint.name)
    manages = level == "CAN_MANAGE"
    context: dict[str, Any] = {
        "e": endpoint,
        "tab": tab,
        "level": level,
        "manages": manages,
        "entities": entities_of(endpoint, model_workers(request)),
        "fallback": fallback_of(me.catalog.get_ai_gateway(endpoint.name)),
        "task": _task(endpoint.kind, endpoint.options),
        "created": _stamp(endpoint.created_at),
        "updated": _stamp(endpoint.updated_at),
        "gateway": me.catalog.get_ai_gateway(endpoint.name),
        "range": request.query_params.get("range", "24h")
        if request.query_params.get("range") in RANGES
        else "24h",
        "ranges": RANGES,
    }
    if tab == "overview":
        context["versions"] = [
            {**v, "options": shown(v.get("options") or {}), "when": _when(v)}
            for v in me.catalog.versions(endpoint.name)[::-1]
        ]
        context["options"] = json.dumps(_editable(endpoint), indent=2, sort_keys=True)
        context["tags"] = me.catalog.tags(endpoint.name)
        context["by_entity"] = {
            entity: t
            for (_, entity), t in entity_breakdown(me, rollups(me), 30, mine=False, endpoint=endpoint.name)
        }
        context["by_entity_total"] = sum(t.requests for t in context["by_entity"].values())
    elif tab == "gateway":
        gateway = context["gateway"]
        context["rate_limits"] = json.dumps(gateway.get("rate_limits", []), indent=2)
        context["guardrails"] = (
            json.dumps(gateway.get("guardrails", {}), indent=2) if gateway.get("guardrails") else ""
        )
        context["table"] = gateway.get("inference_table_config", {})
    elif tab == "permissions":
        context["acl"] = me.catalog.get_permissions(endpoint.name)["access_control_list"] if manages else []
        context["levels"] = LEVELS
    elif tab == "logs":
        f = LogFilter.from_query(request.query_params)
        rows, before = log_page(me, endpoint.name, f)
        context.update(
            f=f,
            rows=rows,
            next_query=urlencode({"tab": "logs", **f.query(before=before)}) if before else None,
            csv_query=urlencode(f.query(before=None)),
            searchable=searchable(),
            table_on=bool(context["gateway"].get("inference_table_config", {}).get("enabled")),
        )
    else:
        context["by_user"] = breakdown(me, rollups(me), 30, "user", mine=False, endpoint=endpoint.name)
    return "endpoint.html", context


def _editable(endpoint: Endpoint) -> dict[str, Any]:
    """What the options editor holds: the options, or every served entity where there are several (without
    the catalog's own flags either way)."""
    if not endpoint.entities:
        return shown(endpoint.options)
    return {"served_entities": [{**e.to_dict(), "options": shown(e.options)} for e in endpoint.entities]}


def chart_data(ui: Ui, request: Request, me: Me) -> Response:
    endpoint = me.catalog.authorize(request.path_params["name"], "manage")  # the charts show every caller's
    hours = RANGES.get(request.query_params.get("range", "24h"), 24)
    figures = rollups(me)
    found = series(me, figures, endpoint.name, hours)
    found.update(entity_series(me, figures, endpoint.name, hours))
    return JSONResponse(found)


async def update_config(ui: Ui, request: Request, me: Me) -> Response:
    form = await form_of(request)
    name = request.path_params["name"]

    def work() -> None:
        options = _json(form.get("options", ""), "Options", None)
        if not isinstance(options, dict):
            raise ConfigError('Options are a JSON object, e.g. {"model": "gpt-4o-mini"}.')
        current = me.catalog.authorize(name, "manage")
        if current.entities:  # several served entities: the editor holds them all
            given = options.get("served_entities")
            if set(options) != {"served_entities"} or not isinstance(given, list):
                raise ConfigError(
                    f"{current.name!r} serves several entities: its options are"
                    ' {"served_entities": [{"name": ..., "kind": ..., "options": {...}, "traffic_percentage": ...}]}.'
                )
            me.catalog.update(name, description=form.get("description"), served_entities=given)
            return
        options = shown(options)  # the catalog's flags are its own to set
        removed: dict[str, Any] = {k: None for k in shown(current.options) if k not in options}
        me.catalog.update(name, description=form.get("description"), **{**removed, **options})

    await run_in_threadpool(work)
    return RedirectResponse(f"/ui/endpoints/{name}?tab=overview", 303)


async def delete(ui: Ui, request: Request, me: Me) -> Response | tuple[str, dict[str, Any]]:
    form = await form_of(request)
    endpoint = await run_in_threadpool(me.catalog.authorize, request.path_params["name"], "manage")
    asked = confirm_step(
        request,
        form,
        title=f"Delete {endpoint.name}?",
        text=f"{endpoint.name}, its versions and its grants go; queries naming it fail. Its usage and request"
        " log stay. This cannot be undone.",
        button=f"Delete {endpoint.name}",
        back=f"/ui/endpoints/{quote(endpoint.name, safe='')}",
    )
    if asked is not None:
        return asked
    await run_in_threadpool(me.catalog.delete, endpoint.name)
    return RedirectResponse("/ui/endpoints", 303)


async def update_gateway(ui: Ui, request: Request, me: Me) -> Response:
    form = await form_of(request)
    name = request.path_params["name"]

    def work() -> None:
        config: dict[str, Any] = {"rate_limits": _json(form.get("rate_limits", ""), "Rate limits", [])}
        rails = _json(form.get("guardrails", ""), "Guardrails", None)
        if rails:
            config["guardrails"] = rails
        days = form.get("retention_days", "").strip()
        table: dict[str, Any] = {"enabled": form.get("table_enabled") == "on"}
        if days:
            if not days.isdigit():
                raise ConfigError(f"Retention is a whole number of days, not {days!r}.")
            table["retention_days"] = int(days)
        config["inference_table_config"] = table
        fallback = me.catalog.get_ai_gateway(name).get("fallback_config")
        if fallback is not None:  # set on the traffic form: kept as it is
            config["fallback_config"] = fallback
        me.catalog.put_ai_gateway(name, config)

    await run_in_threadpool(work)
    return RedirectResponse(f"/ui/endpoints/{name}?tab=gateway&saved=1", 303)


def _share(form: dict[str, str], entity: str) -> int:
    text = form.get(f"share:{entity}", "").strip()
    if not (text.isascii() and text.isdigit() and len(text) <= 3):
        raise ConfigError(
            f"The traffic percentage of {entity!r} is a whole number from 0 to 100, not {text!r}."
        )
    return int(text)


async def update_traffic(ui: Ui, request: Request, me: Me) -> Response:
    """The traffic form: one percentage per served entity and the fallback setting, through the catalog's
    own calls (update(served_entities=...), put_ai_gateway), so every check is the catalog's. A bad split
    changes nothing: it is checked as the catalog checks it before the gateway is written."""
    form = await form_of(request)
    name = request.path_params["name"]

    def work() -> str:
        current = me.catalog.authorize(name, "manage")
        if form.get("version", "") != str(current.version):
            raise ApiError(
                409,
                "RESOURCE_CONFLICT",
                f"{current.name!r} changed since this page was loaded (now version {current.version}):"
                " reload it and make the change again.",
            )
        entities = [
            ServedEntity(e.name, e.kind, e.options, _share(form, e.name) if current.entities else 100)
            for e in current.served_entities()
        ]
        split_changed = [e.traffic_percentage for e in entities] != [
            e.traffic_percentage for e in current.served_entities()
        ]
        if split_changed:  # the catalog's own rules, before anything is written
            checked_entities(current.name, entities, lambda label, kind, options: options)
        gateway = me.catalog.get_ai_gateway(current.name)
        before = gateway.get("fallback_config")
        target = form.get("fallback_endpoint", "").strip() or None
        wanted = {"enabled": form.get("fallback") == "on", **({"endpoint": target} if target else {})}
        fallback_changed = wanted != (before or {"enabled": False})
        if fallback_changed:
            me.catalog.put_ai_gateway(current.name, {**gateway, "fallback_config": wanted})
        if split_changed:
            try:
                me.catalog.update(current.name, served_entities=entities)
            except Exception:
                if fallback_changed:  # as it was: the change is one or nothing
                    restored = {k: v for k, v in gateway.items() if k != "fallback_config"}
                    if before is not None:
                        restored["fallback_config"] = before
                    me.catalog.put_ai_gateway(current.name, restored)
                raise
        return current.name

    found = await run_in_threadpool(work)
    return RedirectResponse(f"/ui/endpoints/{quote(found, safe='')}?tab=overview&saved=traffic", 303)


async def update_permissions(ui: Ui, request: Request, me: Me) -> Response:
    form = await form_of(request)
    name = request.path_params["name"]

    def work() -> None:
        field = {
            "user": "user_name",
            "group": "group_name",
            "service_principal": "service_principal_name",
        }.get(form.get("principal_type", ""))
        who = form.get("principal", "").strip()
        if field is None or not who:
            raise ConfigError("Choose a principal (user, group or service principal) and give its name.")
        if form.get("action") == "remove":
            acl = me.catalog.get_permissions(name)["access_control_list"]
            kept = [
                {k: v for k, v in entry.items() if k.endswith("_name") and k != "display_name"}
                | {"permission_level": p["permission_level"]}
                for entry in acl
                if entry.get("display_name") != who
                for p in entry["all_permissions"]
                if not p.get("inherited")
            ]
            me.catalog.set_permissions(name, kept)
        else:
            level = form.get("permission_level", "")
            me.catalog.update_permissions(name, [{field: who, "permission_level": level}])

    await run_in_threadpool(work)
    return RedirectResponse(f"/ui/endpoints/{name}?tab=permissions", 303)


def log_row(ui: Ui, request: Request, me: Me) -> tuple[str, dict[str, Any]]:
    row = log_detail(me, request.path_params["name"], request.path_params["request_id"])
    if row is None:
        raise ConfigError("No such request in this endpoint's log that you may read.")
    if request.headers.get("hx-request") == "true":  # the log's row opened in place
        return "_log_detail.html", {"row": row}
    return "log_request.html", {"row": row, "endpoint": request.path_params["name"]}  # without script: a page


def logs_csv(ui: Ui, request: Request, me: Me) -> Response:
    name = request.path_params["name"]
    text = log_csv(me, name, LogFilter.from_query(request.query_params))
    return Response(
        text,
        media_type="text/csv; charset=utf-8",
        headers={"content-disposition": f'attachment; filename="{me.catalog.get(name).name}-requests.csv"'},
    )


ROUTES: list[tuple[str, Any, list[str]]] = [
    ("/endpoints", list_page, ["GET"]),
    ("/endpoints", create, ["POST"]),
    ("/endpoints/{name}", endpoint_page, ["GET"]),
    ("/endpoints/{name}/series", chart_data, ["GET"]),
    ("/endpoints/{name}/config", update_config, ["POST"]),
    ("/endpoints/{name}/delete", delete, ["POST"]),
    ("/endpoints/{name}/gateway", update_gateway, ["POST"]),
    ("/endpoints/{name}/traffic", update_traffic, ["POST"]),
    ("/endpoints/{name}/permissions", update_permissions, ["POST"]),
    ("/endpoints/{name}/logs.csv", logs_csv, ["GET"]),
    ("/endpoints/{name}/logs/{request_id}", log_row, ["GET"]),
]
