"""The ASGI app: Databricks' serving-endpoints routes over the catalog, governance and runtime.

Every handler runs the same way: the caller authenticated (from the header alone), then the body read (at
most `MAX_BODY_BYTES`, its JSON bounded by `_input.py`), then the work (catalog, SQLite, model calls: all
blocking) in a worker thread, and any error turned into the JSON body and status clients expect
(`_errors.py`). The catalog is seen as the caller (`Catalog.acting_as`), so every route asks the same policy
check as SQL.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import inspect
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Mount, Route

from aifuncs._home import home
from aifuncs._types import json_schema, to_duckdb_type
from aifuncs.catalog import Catalog, default_catalog
from aifuncs.errors import AifuncsError
from aifuncs.governance import Identity
from aifuncs.governance.payloads import payload_log
from aifuncs.governance.permissions import DESCRIPTIONS, LEVELS
from aifuncs.runtime import default_runtime
from aifuncs.server._auth import Authenticator
from aifuncs.server._entities import endpoint_options
from aifuncs.server._errors import ApiError, error_response, from_aifuncs, from_unexpected
from aifuncs.server._input import parse_json
from aifuncs.server._invoke import Prepared, prepare, prepare_on_loop
from aifuncs.server._openai import chat, completions, embeddings, kind_of, sse, streamed
from aifuncs.server._secrets import secret_routes
from aifuncs.server._shapes import endpoint_object
from aifuncs.server._statements import Limits, Statements

__all__ = ["MAX_BODY_BYTES", "app"]

MAX_BODY_BYTES = 16 * 1024 * 1024  # Databricks' payload limit
SERVING_IN_FLIGHT = 256  # per worker and remote endpoint, unless the endpoint sets max_concurrency
_SMALL_BODY_BYTES = 64 * 1024  # parsed on the event loop; a bigger body in a worker thread
_log = logging.getLogger("aifuncs.server")
_WORKER = str(os.getpid())  # which worker process answered: operators (and a test) tell them apart

Work = Callable[[Request, Identity, Any], Any]
AsyncWork = Callable[[Request, Identity, Any], Awaitable[Any]]


def _catalog(identity: Identity) -> Catalog:
    return default_catalog().acting_as(identity.principal)


async def _body(request: Request) -> Any:
    """The body as JSON (`_input.parse_json` bounds it); read only once the caller is known. How long a client
    may take to send it is the server's to bound (`_protocol.py`), where the socket is."""
    if request.method in ("GET", "DELETE", "HEAD"):
        return None
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > MAX_BODY_BYTES:
        raise ApiError(413, "REQUEST_TOO_LARGE", f"The body is over {MAX_BODY_BYTES // (1024 * 1024)} MB.")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        chunks.append(chunk)
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise ApiError(
                413, "REQUEST_TOO_LARGE", f"The body is over {MAX_BODY_BYTES // (1024 * 1024)} MB."
            )
    raw = b"".join(chunks)
    if not raw.strip():
        return {}
    return parse_json(raw) if len(raw) <= _SMALL_BODY_BYTES else await run_in_threadpool(parse_json, raw)


def api(auth: Authenticator, work: Work | AsyncWork) -> Callable[[Request], Awaitable[Response]]:
    """A route: authenticate (the header alone), then read the body, work (in a thread, unless it is a
    coroutine that hands its blocking parts to one itself), answer JSON (or the error a client expects).
    Nothing of the body is read for a caller without a valid token."""
    is_async = inspect.iscoroutinefunction(work)

    async def endpoint(request: Request) -> Response:
        response: Response
        read = request.method in ("GET", "DELETE", "HEAD")
        try:
            known = auth.known(request)
            identity = known if known is not None else await run_in_threadpool(auth.identity, request)
            body = await _body(request)
            read = True
            if is_async:
                result = await work(request, identity, body)
            else:
                result = await run_in_threadpool(work, request, identity, body)
        except ApiError as error:
            response = error_response(error)
        except AifuncsError as error:
            response = error_response(from_aifuncs(error))
        except ClientDisconnect:  # the client went (or was timed out) mid-body: nobody to answer
            return Response(status_code=400, headers={"connection": "close"})
        except Exception as error:  # a store's passing failure (503), else a bug of ours: logged, a JSON 500
            passing = from_unexpected(error)
            if passing is None:
                _log.exception("%s %s failed", request.method, request.url.path)
            response = error_response(
                passing or ApiError(500, "INTERNAL_ERROR", "The server failed on this request; see its log.")
            )
        else:
            response = result if isinstance(result, Response) else JSONResponse(result)
        if not read:  # answered before its body was read: the connection is not kept to drain the rest
            response.headers["connection"] = "close"
        response.headers["x-aifuncs-worker"] = _WORKER
        return response

    return endpoint


def _level(catalog: Catalog, name: str) -> str | None:
    return catalog.permission_level(name)


def list_endpoints(request: Request, identity: Identity, body: Any) -> dict[str, Any]:
    catalog = _catalog(identity)
    return {"endpoints": [endpoint_object(catalog, e, _level(catalog, e.name)) for e in catalog.list()]}


def get_endpoint(request: Request, identity: Identity, body: Any) -> dict[str, Any]:
    catalog = _catalog(identity)
    endpoint = catalog.get(request.path_params["name"])
    return endpoint_object(catalog, endpoint, _level(catalog, endpoint.name))


def create_endpoint(request: Request, identity: Identity, body: Any) -> dict[str, Any]:
    """POST: the endpoint, its creator's CAN_MANAGE, and its AI gateway settings, all or nothing."""
    if not isinstance(body, dict) or not isinstance(body.get("name"), str):
        raise ApiError(400, "INVALID_PARAMETER_VALUE", "Give the endpoint's name and config.")
    name = body["name"]
    kind, options = endpoint_options(body.get("config"))
    catalog = _catalog(identity)
    gateway = dict(body.get("ai_gateway") or {})
    gateway.pop("usage_tracking_config", None)  # always tracked here
    if body.get("rate_limits"):
        gateway.setdefault("rate_limits", body["rate_limits"])
    endpoint = catalog.create(name, kind, description=str(body.get("description") or ""), **options)
    try:
        if gateway:
            catalog.put_ai_gateway(endpoint.name, gateway)
        if body.get("tags"):
            catalog.patch_tags(endpoint.name, add_tags=body["tags"])
    except BaseException:
        catalog.delete(endpoint.name)  # a create that cannot be whole leaves nothing behind
        raise
    return endpoint_object(catalog, endpoint, _level(catalog, endpoint.name))


def update_config(request: Request, identity: Identity, body: Any) -> dict[str, Any]:
    """PUT .../config: the served entity's settings, as a new version of the endpoint."""
    catalog = _catalog(identity)
    current = catalog.authorize(request.path_params["name"], "manage")
    kind, options = endpoint_options(body)
    if kind != current.kind:
        raise ApiError(
            400,
            "INVALID_PARAMETER_VALUE",
            f"{current.name!r} serves a {current.kind} model; a {kind} one is another endpoint: create it, or delete"
            " this one first.",
        )
    keep = {k: v for k, v in current.options.items() if k not in options and k not in _ENTITY_OPTIONS}
    endpoint = catalog.update(current.name, replace=True, **keep, **options)
    return endpoint_object(catalog, endpoint, _level(catalog, endpoint.name))


# Options a served entity sets: replaced whole by a new config (others, like prices, stay).
_ENTITY_OPTIONS = ("model_uri", "model", "task", "base_url", "api_key_env", "api_key_secret", "url")


def delete_endpoint(request: Request, identity: Identity, body: Any) -> dict[str, Any]:
    _catalog(identity).delete(request.path_params["name"])
    return {}


def put_ai_gateway(request: Request, identity: Identity, body: Any) -> dict[str, Any]:
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
    return _catalog(identity).put_ai_gateway(request.path_params["name"], config)


def put_rate_limits(request: Request, identity: Identity, body: Any) -> dict[str, Any]:
    limits = body.get("rate_limits", []) if isinstance(body, dict) else None
    return {"rate_limits": _catalog(identity).set_rate_limits(request.path_params["name"], limits)}  # type: ignore[arg-type]


def patch_tags(request: Request, identity: Identity, body: Any) -> dict[str, Any]:
    body = body if isinstance(body, dict) else {}
    tags = _catalog(identity).patch_tags(
        request.path_params["name"], body.get("add_tags"), body.get("delete_tags")
    )
    return {"tags": tags}


def metrics(request: Request, identity: Identity, body: Any) -> Response:
    """OpenMetrics counters of the endpoint's requests, from the usage log (every process's)."""
    endpoint = _catalog(identity).authorize(request.path_params["name"], "view")
    rows = [
        r
        for r in default_runtime().usage.read()
        if r["endpoint"] == endpoint.name and r["status"] != "guardrail"
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


def endpoint_openapi(request: Request, identity: Identity, body: Any) -> dict[str, Any]:
    """The OpenAPI document of one endpoint's query: its inputs (from the model's signature) and answers."""
    endpoint = _catalog(identity).authorize(request.path_params["name"], "view")
    provider = default_runtime().provider(endpoint)
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


def permissions(request: Request, identity: Identity, body: Any) -> dict[str, Any]:
    catalog = _catalog(identity)
    name = request.path_params["endpoint_id"]
    if request.method == "GET":
        return catalog.get_permissions(name)
    entries = body.get("access_control_list") if isinstance(body, dict) else None
    if not isinstance(entries, list):
        raise ApiError(400, "INVALID_PARAMETER_VALUE", 'Send {"access_control_list": [...]}.')
    change = catalog.set_permissions if request.method == "PUT" else catalog.update_permissions
    return change(name, entries)


def permission_levels(request: Request, identity: Identity, body: Any) -> dict[str, Any]:
    _catalog(identity).authorize(request.path_params["endpoint_id"], "view")
    return {
        "permission_levels": [
            {"permission_level": level, "description": DESCRIPTIONS[level]} for level in LEVELS
        ]
    }


async def invocations(request: Request, identity: Identity, body: Any) -> Response:
    name = request.path_params["name"]
    entity = request.path_params.get("served_model_name")
    if entity is not None and entity.lower() != name.lower():  # one served entity, named as its endpoint
        await run_in_threadpool(_catalog(identity).authorize, name, "view")
        raise ApiError(
            404,
            "RESOURCE_DOES_NOT_EXIST",
            f"Endpoint {name!r} serves no entity {entity!r}; it serves {name!r}.",
        )
    kind = kind_of(body) if isinstance(body, dict) else None
    prepare_body = {"chat": chat, "completions": completions, "embeddings": embeddings}.get(
        kind or "", prepare
    )
    stream = kind in ("chat", "completions") and bool(body.get("stream"))
    answer = await _answered(prepare_body, name, body, identity, _small(request), stream, databricks=True)
    return answer if isinstance(answer, Response) else _reply(answer, name, streamed=stream)


async def _answered(
    prepare_body: Callable[..., Prepared],
    name: str,
    body: Any,
    identity: Identity,
    small: bool,
    stream: bool = False,
    databricks: bool = False,
) -> dict[str, Any] | Response:
    """Bind (on this loop when the binding is kept and the body small, else in a worker thread: the catalog
    is SQLite), then await the runtime's answer on this loop: no thread waits while the model works."""
    prepared = prepare_on_loop(prepare_body, name, body, identity.principal) if small else None
    if prepared is None:
        prepared = await run_in_threadpool(prepare_body, name, body, identity.principal)
    if stream:  # token by token where the endpoint's kind can (`_openai.streamed`), else whole below
        headers = {"served-model-name": name, "x-aifuncs-worker": _WORKER}
        if (events := await streamed(prepared, name, body, headers, databricks=databricks)) is not None:
            return events
    call, rows, word = prepared
    answers = await default_runtime().answer_call(call, rows)
    return word(answers)


def _small(request: Request) -> bool:
    """A body small enough to turn into rows on the event loop (a bigger one is parsed in a worker thread)."""
    length = request.headers.get("content-length")
    return length is not None and length.isdigit() and int(length) <= _SMALL_BODY_BYTES


def _reply(answer: dict[str, Any], name: str, *, streamed: bool) -> Response:
    headers = {"served-model-name": name, "x-aifuncs-worker": _WORKER}
    if streamed:
        return StreamingResponse(iter(sse(answer)), media_type="text/event-stream", headers=headers)
    return JSONResponse(answer, headers=headers)


def openai_route(kind: str) -> AsyncWork:
    """`/serving-endpoints/chat/completions` and the like: OpenAI's routes, `model` naming the endpoint."""
    prepare_body = {"chat": chat, "completions": completions, "embeddings": embeddings}[kind]

    async def route(request: Request, identity: Identity, body: Any) -> Response:
        if not isinstance(body, dict) or not isinstance(body.get("model"), str):
            raise ApiError(400, "INVALID_PARAMETER_VALUE", "Name the endpoint as model.")
        stream = kind != "embeddings" and bool(body.get("stream"))
        answer = await _answered(prepare_body, body["model"], body, identity, _small(request), stream)
        return answer if isinstance(answer, Response) else _reply(answer, body["model"], streamed=stream)

    return route


def models(request: Request, identity: Identity, body: Any) -> dict[str, Any]:
    endpoints = _catalog(identity).list()
    return {"object": "list", "data": [
        {"id": e.name, "object": "model", "owned_by": "aifuncs",
         "created": int(e.created_at.timestamp()) if e.created_at else 0} for e in endpoints]}  # fmt: skip


async def health(request: Request) -> Response:
    return JSONResponse({"status": "ok"}, headers={"x-aifuncs-worker": _WORKER})


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
        Route(prefix, api(auth, list_endpoints), methods=["GET"]),
        Route(prefix + "/", api(auth, list_endpoints), methods=["GET"]),
        Route(prefix, api(auth, create_endpoint), methods=["POST"]),
        Route(prefix + "/", api(auth, create_endpoint), methods=["POST"]),
        Route(prefix + "/{name}/config", api(auth, update_config), methods=["PUT"]),
        Route(prefix + "/{name}", api(auth, get_endpoint), methods=["GET"]),
        Route(prefix + "/{name}", api(auth, delete_endpoint), methods=["DELETE"]),
        Route(prefix + "/{name}/ai-gateway", api(auth, put_ai_gateway), methods=["PUT"]),
        Route(prefix + "/{name}/rate-limits", api(auth, put_rate_limits), methods=["PUT"]),
        Route(prefix + "/{name}/tags", api(auth, patch_tags), methods=["PATCH"]),
        Route(prefix + "/{name}/metrics", api(auth, metrics), methods=["GET"]),
        Route(prefix + "/{name}/openapi", api(auth, endpoint_openapi), methods=["GET"]),
        Route(
            "/api/2.0/permissions/serving-endpoints/{endpoint_id}",
            api(auth, permissions),
            methods=["GET", "PUT", "PATCH"],
        ),  # fmt: skip
        Route(
            "/api/2.0/permissions/serving-endpoints/{endpoint_id}/permissionLevels",
            api(auth, permission_levels),
            methods=["GET"],
        ),  # fmt: skip
        *[
            Route(f"{base}/models", api(auth, models), methods=["GET"])
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
    routes.append(Route("/openapi.json", _openapi_route(routes), methods=["GET"]))
    from aifuncs.server.ui import ui_app  # the web UI, on the same governance (imports Jinja2: only here)

    server = Starlette(
        routes=[*routes, Mount("/ui", app=ui_app(home(), statements))],
        lifespan=_lifespan,
        exception_handlers=_NO_ROUTE,
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


_OPEN = ("/health", "/.well-known/databricks-config", "/openapi.json")


async def _no_route(request: Request, error: Exception) -> Response:
    """A path or method no route serves: the JSON error every client reads, not Starlette's plain text."""
    status = getattr(error, "status_code", 404)
    if status == 405:
        found = ApiError(405, "METHOD_NOT_ALLOWED", f"{request.url.path} does not take {request.method}.")
    else:
        found = ApiError(404, "ENDPOINT_NOT_FOUND", f"No API at {request.url.path}; see /openapi.json.")
    return error_response(found)


_NO_ROUTE: dict[Any, Any] = {404: _no_route, 405: _no_route}


def _openapi_route(routes: list[Route]) -> Callable[[Request], Awaitable[Response]]:
    """An OpenAPI 3.1 document of the routes: which need a bearer token, which take a JSON body."""
    paths: dict[str, dict[str, Any]] = {}
    for route in [*routes, Route("/openapi.json", health, methods=["GET"])]:
        for method in sorted((route.methods or set()) - {"HEAD"}):
            parameters = [{"name": n, "in": "path", "required": True, "schema": {"type": "string"}}
                          for n in route.param_convertors]  # fmt: skip
            operation: dict[str, Any] = {
                "parameters": parameters,
                "responses": {"200": {"description": "OK"}, "400": {"description": "A bad request"}},
            }
            if route.path not in _OPEN:
                operation["security"] = [{"bearer": []}]
                operation["responses"]["401"] = {"description": "No valid token"}
            if method in ("POST", "PUT", "PATCH"):
                operation["requestBody"] = {"content": {"application/json": {"schema": {"type": "object"}}}}
            paths.setdefault(route.path, {})[method.lower()] = operation
    document = {
        "openapi": "3.1.0",
        "info": {"title": "aifuncs serving endpoints", "version": "1"},
        "components": {"securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
        "paths": paths,
    }

    async def openapi(request: Request) -> Response:
        return JSONResponse(document)

    return openapi
