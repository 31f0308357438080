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

from aifuncs.catalog._authoring import EGRESS_FLAG
from aifuncs.errors import ConfigError
from aifuncs.governance.permissions import LEVELS
from aifuncs.governance.principals import CREATE_ENDPOINTS
from aifuncs.providers import provider_class
from aifuncs.runtime._rollups import Rollups
from aifuncs.server._shapes import served_entity
from aifuncs.server.ui._logs import LogFilter, log_csv, log_detail, log_page, searchable
from aifuncs.server.ui._stats import breakdown, endpoint_totals, series
from aifuncs.server.ui._web import Me, Ui, confirm_step, form_of

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
            "entity": served_entity(e),
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
        "entity": served_entity(endpoint),
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
        context["options"] = json.dumps(shown(endpoint.options), indent=2, sort_keys=True)
        context["tags"] = me.catalog.tags(endpoint.name)
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


def chart_data(ui: Ui, request: Request, me: Me) -> Response:
    endpoint = me.catalog.authorize(request.path_params["name"], "manage")  # the charts show every caller's
    hours = RANGES.get(request.query_params.get("range", "24h"), 24)
    return JSONResponse(series(me, rollups(me), endpoint.name, hours))


async def update_config(ui: Ui, request: Request, me: Me) -> Response:
    form = await form_of(request)
    name = request.path_params["name"]

    def work() -> None:
        options = _json(form.get("options", ""), "Options", None)
        if not isinstance(options, dict):
            raise ConfigError('Options are a JSON object, e.g. {"model": "gpt-4o-mini"}.')
        current = me.catalog.authorize(name, "manage")
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
        me.catalog.put_ai_gateway(name, config)

    await run_in_threadpool(work)
    return RedirectResponse(f"/ui/endpoints/{name}?tab=gateway&saved=1", 303)


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
    ("/endpoints/{name}/permissions", update_permissions, ["POST"]),
    ("/endpoints/{name}/logs.csv", logs_csv, ["GET"]),
    ("/endpoints/{name}/logs/{request_id}", log_row, ["GET"]),
]
