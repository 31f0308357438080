"""The ASGI app: Databricks' serving-endpoints routes over the catalog, governance and runtime.

Every handler runs the same way (`_routing.api`): the caller authenticated (from the header alone), then the
body read, then the work, and any error turned into the JSON body and status clients expect. The routes live
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

from aifuncs._home import home
from aifuncs.governance import Identity
from aifuncs.governance.payloads import payload_log
from aifuncs.runtime import default_runtime
from aifuncs.server import _manage as manage
from aifuncs.server._auth import Authenticator
from aifuncs.server._errors import ApiError
from aifuncs.server._query import invocations, openai_route
from aifuncs.server._routing import MAX_BODY_BYTES, NO_ROUTE, api, health, openapi_route
from aifuncs.server._secrets import secret_routes
from aifuncs.server._statements import Limits, Statements

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


def statement_routes(auth: Authenticator, statements: Statements) -> list[Route]:
    base = "/api/2.0/sql/statements"

    async def execute(request: Request, identity: Identity, body: Any) -> dict[str, Any]:
        return await statements.execute(identity, body)  # waits on the loop, holding no thread

    def status(request: Request, identity: Identity, body: Any) -> dict[str, Any]:
        return statements.get(identity, request.path_params["statement_id"]).response()

    def chunk(request: Request, identity: Identity, body: Any) -> dict[str, Any]:
        statement = statements.get(identity, request.path_params["statement_id"])
        index = str(request.path_params["chunk_index"])
        if not (index.isascii() and index.isdigit() and len(index) <= 9):  # '١' and '²' are digits too
            raise ApiError(
                400,
                "INVALID_PARAMETER_VALUE",
                f"The chunk index {index[:20]!r} is not a chunk number (0, 1, ...): ask for one below the"
                " statement's manifest.total_chunk_count.",
            )
        return statement.chunk(int(index))

    def cancel(request: Request, identity: Identity, body: Any) -> dict[str, Any]:
        statements.cancel(identity, request.path_params["statement_id"])
        return {}

    return [
        Route(base, api(auth, execute), methods=["POST"]),
        Route(base + "/", api(auth, execute), methods=["POST"]),
        Route(base + "/{statement_id}", api(auth, status), methods=["GET"]),
        Route(base + "/{statement_id}/result/chunks/{chunk_index}", api(auth, chunk), methods=["GET"]),
        Route(base + "/{statement_id}/cancel", api(auth, cancel), methods=["POST"]),
    ]


def app(warehouse: str | Path | None = None, public_url: str | None = None) -> Starlette:
    """The server as an ASGI app, acting on the catalog of the current AIFUNCS_HOME. `warehouse`: the DuckDB
    file SQL over HTTP reads (default: AIFUNCS_SERVE_WAREHOUSE, else an empty database per statement).
    `public_url`: how clients reach it, as /.well-known/databricks-config tells them (default:
    AIFUNCS_SERVE_PUBLIC_URL, else the address each connection reached)."""
    auth = Authenticator(home())
    given = warehouse or os.environ.get("AIFUNCS_SERVE_WAREHOUSE") or None
    statements = Statements(Path(given).resolve() if given else None, Limits.from_environ(os.environ))
    prefix = "/api/2.0/serving-endpoints"
    routes = [
        # The query routes first: Starlette tries routes in order, and these take nearly all the traffic.
        Route("/serving-endpoints/{name}/invocations", api(auth, invocations), methods=["POST"]),
        *[
            Route(f"{base}/{path}", api(auth, openai_route(kind)), methods=["POST"])
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
        Route(prefix, api(auth, manage.list_endpoints), methods=["GET"]),
        Route(prefix + "/", api(auth, manage.list_endpoints), methods=["GET"]),
        Route(prefix, api(auth, manage.create_endpoint), methods=["POST"]),
        Route(prefix + "/", api(auth, manage.create_endpoint), methods=["POST"]),
        Route(prefix + "/{name}/config", api(auth, manage.update_config), methods=["PUT"]),
        Route(prefix + "/{name}", api(auth, manage.get_endpoint), methods=["GET"]),
        Route(prefix + "/{name}", api(auth, manage.delete_endpoint), methods=["DELETE"]),
        Route(prefix + "/{name}/ai-gateway", api(auth, manage.put_ai_gateway), methods=["PUT"]),
        Route(prefix + "/{name}/rate-limits", api(auth, manage.put_rate_limits), methods=["PUT"]),
        Route(prefix + "/{name}/tags", api(auth, manage.patch_tags), methods=["PATCH"]),
        Route(prefix + "/{name}/metrics", api(auth, manage.metrics), methods=["GET"]),
        Route(prefix + "/{name}/openapi", api(auth, manage.endpoint_openapi), methods=["GET"]),
        Route(
            "/api/2.0/permissions/serving-endpoints/{endpoint_id}",
            api(auth, manage.permissions),
            methods=["GET", "PUT", "PATCH"],
        ),  # fmt: skip
        Route(
            "/api/2.0/permissions/serving-endpoints/{endpoint_id}/permissionLevels",
            api(auth, manage.permission_levels),
            methods=["GET"],
        ),  # fmt: skip
        *[
            Route(f"{base}/models", api(auth, manage.models), methods=["GET"])
            for base in ("/serving-endpoints", "/v1")
        ],
        *statement_routes(auth, statements),
        *secret_routes(lambda work: api(auth, work)),
        Route(
            "/serving-endpoints/{name}/served-models/{served_model_name}/invocations",
            api(auth, invocations),
            methods=["POST"],
        ),  # fmt: skip
    ]
    routes.append(Route("/openapi.json", openapi_route(routes), methods=["GET"]))
    from aifuncs.server.ui import ui_app  # the web UI, on the same governance (imports Jinja2: only here)

    server = Starlette(
        routes=[*routes, Mount("/ui", app=ui_app(home(), statements))],
        lifespan=_lifespan,
        exception_handlers=NO_ROUTE,
    )
    server.state.statements = statements  # cancelled when the server stops
    return server


@contextlib.asynccontextmanager
async def _lifespan(app: Starlette) -> AsyncIterator[None]:
    # Each worker process answers on one event loop: the server's is the runtime's too.
    runtime = default_runtime()
    runtime.adopt_loop(asyncio.get_running_loop())
    runtime.serving_in_flight = SERVING_IN_FLIGHT
    # What was loaded to start (MLflow, pandas, pyarrow: millions of objects) is never garbage: kept out of
    # the collector's full passes, which otherwise stall every request in flight now and then.
    gc.freeze()
    yield
    # Stopping: uvicorn re-raises SIGTERM once it has shut down, which ends the process without atexit, so the
    # usage and inference-table rows still buffered are written here, briefly as at exit: a locked store must
    # neither hold the stop up nor fail it (what is not written then is in the journal, for the next process).
    runtime.usage.close()
    payload_log().close()
    statements = getattr(app.state, "statements", None)
    if statements is not None:
        statements.close()
