"""Usage (breakdowns and "My usage", from the daily rollup), SQL with EXPLAIN's cost first,
the jobs' run ledger, tokens (one's own) and principals (admins). Each acts as the signed-in principal."""

from __future__ import annotations

import csv
import io
from types import SimpleNamespace
from typing import Any
from urllib.parse import urlencode

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response

from aifuncs import _runs as ledger
from aifuncs.errors import ConfigError
from aifuncs.governance.tokens import DEFAULT_DAYS
from aifuncs.server._errors import ApiError
from aifuncs.server._input import parse_json
from aifuncs.server.ui._endpoints import rollups
from aifuncs.server.ui._stats import breakdown, entity_breakdown
from aifuncs.server.ui._web import Me, Ui, confirm_step, form_of

__all__ = ["ROUTES"]

BYS = ("endpoint", "entity", "user", "group", "day")
DAYS = (1, 7, 30, 90)


def _usage_view(request: Request, me: Me) -> tuple[str, int, bool, list[tuple[str, Any]]]:
    params = request.query_params
    by = params.get("by", "endpoint") if params.get("by") in BYS else "endpoint"
    days = int(params["days"]) if params.get("days", "").isdigit() and int(params["days"]) in DAYS else 30
    mine = params.get("mine") == "1"
    if by == "entity":  # per served entity that answered: "endpoint/entity"
        found = entity_breakdown(me, rollups(me), days, mine=mine)
        return by, days, mine, [(f"{endpoint}/{entity}", t) for (endpoint, entity), t in found]
    return by, days, mine, breakdown(me, rollups(me), days, by, mine=mine)


def usage(ui: Ui, request: Request, me: Me) -> tuple[str, dict[str, Any]]:
    by, days, mine, found = _usage_view(request, me)
    total = SimpleNamespace(
        requests=sum(t.requests for _, t in found if by != "group") if by != "group" else None,
        tokens=sum(t.tokens for _, t in found) if by != "group" else None,
        errors=sum(t.errors for _, t in found) if by != "group" else None,
        cost=sum(t.cost_usd or 0 for _, t in found) if by != "group" else None,
        fallbacks=sum(t.fallbacks for _, t in found) if by == "entity" else None,
    )
    query = {"by": by, "days": days, **({"mine": "1"} if mine else {})}
    return "usage.html", {
        "by": by, "days": days, "mine": mine, "rows": found, "total": total, "bys": BYS, "all_days": DAYS,
        "top": max([t.requests for _, t in found] or [1]), "csv_query": urlencode(query),
        "link": lambda **change: urlencode({**query, **change}),
    }  # fmt: skip


def usage_csv(ui: Ui, request: Request, me: Me) -> Response:
    by, days, mine, found = _usage_view(request, me)
    out = io.StringIO()
    writer = csv.writer(out)
    extra = ["fallbacks"] if by == "entity" else []
    writer.writerow([by, "requests", "errors", "rows", "input_tokens", "output_tokens", "cost_usd", *extra])
    for key, t in found:
        safe = "'" + key if key[:1] in ("=", "+", "-", "@") else key
        cost = "" if t.cost_usd is None else f"{t.cost_usd:.6f}"
        more = [t.fallbacks] if extra else []
        writer.writerow([safe, t.requests, t.errors, t.rows, t.input_tokens, t.output_tokens, cost, *more])
    return Response(
        out.getvalue(),
        media_type="text/csv; charset=utf-8",
        headers={"content-disposition": f'attachment; filename="usage-by-{by}-{days}d.csv"'},
    )


def sql_page(ui: Ui, request: Request, me: Me) -> tuple[str, dict[str, Any]]:
    return "sql.html", {"statement": request.query_params.get("q", "")}


def _explain(ui: Ui, me: Me, text: str) -> dict[str, Any]:
    from aifuncs.engines.duckdb import explain
    from aifuncs.server._sandbox import Sandbox

    sandbox = Sandbox(ui.statements.warehouse, me.session, ui.statements.limits)
    try:
        found = explain(sandbox.con, text, dialect="databricks")
    finally:
        sandbox.close()
    return {"text": str(found), "cost_usd": found.cost_usd, "calls": len(found.calls)}


async def sql_explain(ui: Ui, request: Request, me: Me) -> Response:
    body = parse_json(await request.body())
    text = str((body or {}).get("statement") or "") if isinstance(body, dict) else ""
    if not text.strip():
        raise ApiError(400, "INVALID_PARAMETER_VALUE", "Write a query first.")
    try:
        return JSONResponse(await run_in_threadpool(_explain, ui, me, text))
    except Exception as error:  # a query EXPLAIN cannot read: say why, as the run would
        import duckdb

        if isinstance(error, duckdb.Error | ConfigError):
            raise ApiError(400, "INVALID_PARAMETER_VALUE", str(error).split("\n")[0]) from None
        raise


async def sql_run(ui: Ui, request: Request, me: Me) -> Response:
    body = parse_json(await request.body())
    if not isinstance(body, dict):
        raise ApiError(400, "INVALID_PARAMETER_VALUE", "Send the statement.")
    return JSONResponse(
        await ui.statements.execute(
            me.session, {"statement": body.get("statement"), "wait_timeout": "5s", "row_limit": 10_000}
        )
    )


def sql_status(ui: Ui, request: Request, me: Me) -> Response:
    return JSONResponse(ui.statements.get(me.identity, request.path_params["id"]).response())


def sql_chunk(ui: Ui, request: Request, me: Me) -> Response:
    index = request.path_params["index"]
    if not (index.isascii() and index.isdigit() and len(index) < 9):
        raise ApiError(400, "INVALID_PARAMETER_VALUE", "A chunk index is a number.")
    return JSONResponse(ui.statements.get(me.identity, request.path_params["id"]).chunk(int(index)))


def sql_cancel(ui: Ui, request: Request, me: Me) -> Response:
    ui.statements.cancel(me.identity, request.path_params["id"])
    return JSONResponse({})


def jobs(ui: Ui, request: Request, me: Me) -> tuple[str, dict[str, Any]]:
    runs = ledger.runs(None, 200, None if me.principal.admin else me.name)
    return "jobs.html", {"runs": runs}


def tokens(ui: Ui, request: Request, me: Me) -> tuple[str, dict[str, Any]]:
    directory = me.directory()
    return "tokens.html", {"tokens": directory.list_tokens(), "secret": None, "default_days": DEFAULT_DAYS}


async def create_token(ui: Ui, request: Request, me: Me) -> tuple[str, dict[str, Any]]:
    form = await form_of(request)
    days_text = str(form.get("days") or "").strip()
    if days_text and not days_text.isdigit():
        raise ConfigError(f"A token's lifetime is a whole number of days, not {days_text!r}.")
    days = int(days_text) if days_text else DEFAULT_DAYS
    for_whom = str(form.get("principal") or "").strip() or None

    def work() -> tuple[str, Any]:
        directory = me.directory()
        secret, _ = directory.create_token(for_whom, days=days, comment=str(form.get("comment") or ""))
        return secret, directory.list_tokens()

    secret, listed = await run_in_threadpool(work)
    return "tokens.html", {"tokens": listed, "secret": secret, "default_days": DEFAULT_DAYS}


async def revoke_token(ui: Ui, request: Request, me: Me) -> Response | tuple[str, dict[str, Any]]:
    token_id = request.path_params["id"]
    if not token_id.isdigit():
        raise ConfigError("A token id is a number.")
    asked = confirm_step(
        request,
        await form_of(request),
        title=f"Revoke token {token_id}?",
        text="Every client using it is refused from now on, and sessions signed in with it end. This cannot"
        " be undone: a new token is a new secret.",
        button=f"Revoke token {token_id}",
        back="/ui/tokens",
    )
    if asked is not None:
        return asked
    await run_in_threadpool(me.directory().revoke_token, int(token_id))
    return RedirectResponse("/ui/tokens", 303)


def principals(ui: Ui, request: Request, me: Me) -> tuple[str, dict[str, Any]]:
    directory = me.directory()
    if not me.principal.admin:
        directory._admin("manage users, groups and service principals")
    listed = directory.list()
    members = {p.name: directory.members(p.name) for p in listed if p.kind == "group"}
    return "principals.html", {"principals": listed, "members": members}


async def change_principals(ui: Ui, request: Request, me: Me) -> Response | tuple[str, dict[str, Any]]:
    form = await form_of(request)
    if form.get("action") == "delete":
        if not me.principal.admin:
            me.directory()._admin("delete users, groups and service principals")
        name = form.get("name", "").strip()
        asked = confirm_step(
            request,
            form,
            title=f"Delete {name}?",
            text=f"{name}'s grants, group memberships and tokens go with it; its sessions end. Someone made"
            " again under this name later is someone else: it reads none of this one's usage or logs.",
            button=f"Delete {name}",
            back="/ui/principals",
        )
        if asked is not None:
            return asked

    def work() -> None:
        directory = me.directory()
        action, name = form.get("action", ""), form.get("name", "").strip()
        if action == "create":
            kind = form.get("kind", "user")
            admin = form.get("admin") == "on"
            if kind == "group":
                directory.create_group(name)
            elif kind == "service_principal":
                directory.create_service_principal(name, admin=admin)
            else:
                directory.create_user(name, admin=admin)
        elif action == "delete":
            directory.delete(name)
        elif action == "add-member":
            directory.add_member(name, form.get("member", "").strip())
        elif action == "remove-member":
            directory.remove_member(name, form.get("member", "").strip())
        else:
            raise ConfigError(f"Unknown change {action!r}.")

    await run_in_threadpool(work)
    return RedirectResponse("/ui/principals", 303)


ROUTES: list[tuple[str, Any, list[str]]] = [
    ("/usage", usage, ["GET"]),
    ("/usage.csv", usage_csv, ["GET"]),
    ("/sql", sql_page, ["GET"]),
    ("/sql/explain", sql_explain, ["POST"]),
    ("/sql/statements", sql_run, ["POST"]),
    ("/sql/statements/{id}", sql_status, ["GET"]),
    ("/sql/statements/{id}/chunks/{index}", sql_chunk, ["GET"]),
    ("/sql/statements/{id}/cancel", sql_cancel, ["POST"]),
    ("/jobs", jobs, ["GET"]),
    ("/tokens", tokens, ["GET"]),
    ("/tokens", create_token, ["POST"]),
    ("/tokens/{id}/revoke", revoke_token, ["POST"]),
    ("/principals", principals, ["GET"]),
    ("/principals", change_principals, ["POST"]),
]
