"""The ASGI app: Databricks' serving-endpoints routes over the catalog, governance and runtime.

Every handler runs the same way (`_routing.api`): the caller authenticated (from the header alone), a session
made for it on the app's runtime and catalog (resolved once, here), then the body read, then the work in that
session, and any error turned into the JSON body and status clients expect. The routes live
by area: `_query.py` (invocations, OpenAI's routes), `_manage.py` (endpoints, AI gateway, permissions),
`_statements.py` (SQL over HTTP, its routes here), `_secrets.py`; this module puts them in order and runs the
worker's lifespan.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route

from aifuncs.catalog import Catalog, default_catalog
from aifuncs.governance.payloads import payload_log
from aifuncs.runtime import Runtime, default_runtime
from aifuncs.server import _manage as manage
from aifuncs.server._auth import Authenticator
from aifuncs.server._errors import ApiError
from aifuncs.server._invoke import Bindings
from aifuncs.server._query import invocations, openai_route
from aifuncs.server._rollout import update_config
from aifuncs.server._routing import MAX_BODY_BYTES, NO_ROUTE, Edge, api, health, openapi_route
from aifuncs.server._secrets import secret_routes
from aifuncs.server._statements import Limits, Statements
from aifuncs.session import Session

__all__ = ["MAX_BODY_BYTES", "app"]

SERVING_IN_FLIGHT = 256  # per worker and remote endpoint, unless the endpoint sets max_concurrency


def databricks_config(public_url: str | None) -> Callable[[Request], Awaitable[Response]]:
    """databricks-sdk asks this first, under a long retry budget: answered at once. The host is the configured
    public URL, else the address the connection reached: never the request's Host header, which a caller
    could set to send the next client's token elsewhere."""

    async def config(request: Request) -> Response:
        host = public_url
        if host is None:
            server = request.scope.get("server") or ("127.0.0.1", None)
            address = f"[{server[0]}]" if ":" in str(server[0]) else str(server[0])
            host = f"{request.url.scheme}://{address}" + (f":{server[1]}" if server[1] else "")
        return JSONResponse({"oidc_endpoint": f"{host.rstrip('/')}/oidc", "workspace_id": "0"})

    return config


def statement_routes(edge: Edge, statements: Statements) -> list[Route]:
    base = "/api/2.0/sql/statements"

    async def execute(request: Request, session: Session, body: Any) -> dict[str, Any]:
        return await statements.execute(session, body)  # waits on the loop, holding no thread

    def status(request: Request, session: Session, body: Any) -> dict[str, Any]:
        return statements.get(session.identity, request.path_params["statement_id"]).response()

    def chunk(request: Request, session: Session, body: Any) -> dict[str, Any]:
        statement = statements.get(session.identity, request.path_params["statement_id"])
        index = str(request.path_params["chunk_index"])
        if not (index.isascii() and index.isdigit() and len(index) <= 9):  # '١' and '²' are digits too
            raise ApiError(
                400,
                "INVALID_PARAMETER_VALUE",
                f"The chunk index {index[:20]!r} is not a chunk number (0, 1, ...): ask for one below the"
                " statement's manifest.total_chunk_count.",
            )
        return statement.chunk(int(index))

    def cancel(request: Request, session: Session, body: Any) -> dict[str, Any]:
        statements.cancel(session.identity, request.path_params["statement_id"])
        return {}

    return [
        Route(base, api(edge, execute), methods=["POST"]),
        Route(base + "/", api(edge, execute), methods=["POST"]),
        Route(base + "/{statement_id}", api(edge, status), methods=["GET"]),
        Route(base + "/{statement_id}/result/chunks/{chunk_index}", api(edge, chunk), methods=["GET"]),
        Route(base + "/{statement_id}/cancel", api(edge, cancel), methods=["POST"]),
    ]


def app(
    warehouse: str | Path | None = None,
    public_url: str | None = None,
    *,
    runtime: Runtime | None = None,
    catalog: Catalog | None = None,
) -> Starlette:
    """The server as an ASGI app, acting on the catalog of the current AIFUNCS_HOME. `warehouse`: the DuckDB
    file SQL over HTTP reads (default: AIFUNCS_SERVE_WAREHOUSE, else an empty database per statement).
    `public_url`: how clients reach it, as /.well-known/databricks-config tells them (default:
    AIFUNCS_SERVE_PUBLIC_URL, else the address each connection reached). `runtime`: what calls the models
    (default: this process's); `catalog`: the endpoints and governance it serves, its home's tokens the ones it
    takes (default: the current AIFUNCS_HOME's). A public edge: both are resolved here, once, and every request
    runs in a session made on them from its caller's identity."""
    runtime = runtime or default_runtime()
    catalog = catalog or default_catalog()
    where = catalog.path.parent  # the home: its principals and tokens, usage and logs
    edge = Edge(Authenticator(where), runtime, catalog)
    bindings = Bindings()
    given = warehouse or os.environ.get("AIFUNCS_SERVE_WAREHOUSE") or None
    statements = Statements(Path(given).resolve() if given else None, Limits.from_environ(os.environ))
    prefix = "/api/2.0/serving-endpoints"
    routes = [
        # The query routes first: Starlette tries routes in order, and these take nearly all the traffic.
        Route("/serving-endpoints/{name}/invocations", api(edge, invocations(bindings)), methods=["POST"]),
        *[
            Route(f"{base}/{path}", api(edge, openai_route(bindings, kind)), methods=["POST"])
            for base in ("/serving-endpoints", "/serving-endpoints/v1", "/v1")
            for path, kind in (
                ("chat/completions", "chat"),
                ("completions", "completions"),
                ("embeddings", "embeddings"),
            )
        ],
        Route("/health", health, methods=["GET"]),
        Route(
            "/.well-known/databricks-config",
            databricks_config(public_url or os.environ.get("AIFUNCS_SERVE_PUBLIC_URL") or None),
            methods=["GET"],
        ),
        Route(prefix, api(edge, manage.list_endpoints), methods=["GET"]),
        Route(prefix + "/", api(edge, manage.list_endpoints), methods=["GET"]),
        Route(prefix, api(edge, manage.create_endpoint), methods=["POST"]),
        Route(prefix + "/", api(edge, manage.create_endpoint), methods=["POST"]),
        Route(prefix + "/{name}/config", api(edge, update_config), methods=["PUT"]),
        Route(prefix + "/{name}", api(edge, manage.get_endpoint), methods=["GET"]),
        Route(prefix + "/{name}", api(edge, manage.delete_endpoint), methods=["DELETE"]),
        Route(prefix + "/{name}/ai-gateway", api(edge, manage.put_ai_gateway), methods=["PUT"]),
        Route(prefix + "/{name}/rate-limits", api(edge, manage.put_rate_limits), methods=["PUT"]),
        Route(prefix + "/{name}/tags", api(edge, manage.patch_tags), methods=["PATCH"]),
        Route(prefix + "/{name}/metrics", api(edge, manage.metrics), methods=["GET"]),
        Route(prefix + "/{name}/openapi", api(edge, manage.endpoint_openapi), methods=["GET"]),
        Route(
            "/api/2.0/permissions/serving-endpoints/{endpoint_id}",
            api(edge, manage.permissions),
            methods=["GET", "PUT", "PATCH"],
        ),  # fmt: skip
        Route(
            "/api/2.0/permissions/serving-endpoints/{endpoint_id}/permissionLevels",
            api(edge, manage.permission_levels),
            methods=["GET"],
        ),  # fmt: skip
        *[
            Route(f"{base}/models", api(edge, manage.models), methods=["GET"])
            for base in ("/serving-endpoints", "/v1")
        ],
        *statement_routes(edge, statements),
        *secret_routes(lambda work: api(edge, work)),
        Route(
            "/serving-endpoints/{name}/served-models/{served_model_name}/invocations",
            api(edge, invocations(bindings)),
            methods=["POST"],
        ),  # fmt: skip
    ]
    routes.append(Route("/openapi.json", openapi_route(routes), methods=["GET"]))
    from aifuncs.server.ui import ui_app  # the web UI, on the same governance (imports Jinja2: only here)

    server = Starlette(
        routes=[*routes, Mount("/ui", app=ui_app(edge, statements, bindings))],
        lifespan=_lifespan,
        exception_handlers=NO_ROUTE,
    )
    server.state.statements = statements  # cancelled when the server stops
    server.state.runtime, server.state.catalog = runtime, catalog  # the lifespan's: loop, model workers
    return server


@contextlib.asynccontextmanager
async def _lifespan(app: Starlette) -> AsyncIterator[None]:
    # Each worker process answers on one event loop: the server's is the runtime's too.
    runtime: Runtime = app.state.runtime
    runtime.adopt_loop(asyncio.get_running_loop())
    runtime.serving_in_flight = SERVING_IN_FLIGHT
    # In-process models answer from worker processes of their own, whose models load now (`aifuncs.workers`).
    from aifuncs.workers import serve_models

    # ... and each pending config update loads here too before its switch (every server process of the home)
    app.state.model_workers = await serve_models(runtime, app.state.catalog.list, app.state.catalog)
    # What was loaded to start (MLflow, pandas, pyarrow: millions of objects) is never garbage: kept out of
    # the collector's full passes, which otherwise stall every request in flight now and then.
    gc.freeze()
    yield
    # Stopping: uvicorn re-raises SIGTERM once it has shut down, which ends the process without atexit, so the
    # usage and inference-table rows still buffered are written here, briefly as at exit: a locked store must
    # neither hold the stop up nor fail it (what is not written then is in the journal, for the next process).
    if app.state.model_workers is not None:
        await app.state.model_workers.close()
    runtime.usage.close()
    payload_log().close()
    statements = getattr(app.state, "statements", None)
    if statements is not None:
        statements.close()
