"""How every route runs: the caller authenticated (from the header alone), a session made for it (`Edge`: the
app's runtime and catalog, resolved once by `app()`), then the body read (at most `MAX_BODY_BYTES`, its JSON
bounded by `_input.py`), then the work, in a worker thread unless it is a coroutine, and any error turned into
the JSON body and status clients expect (`_errors.py`); paths no route serves, and the OpenAPI document of the
routes."""

from __future__ import annotations

import inspect
import logging
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from aifuncs.catalog import Catalog
from aifuncs.errors import AifuncsError
from aifuncs.governance import Identity
from aifuncs.runtime import RequestContext, Runtime
from aifuncs.server._auth import Authenticator
from aifuncs.server._errors import ApiError, error_response, from_aifuncs, from_unexpected
from aifuncs.server._input import parse_json
from aifuncs.session import Session

MAX_BODY_BYTES = 16 * 1024 * 1024  # Databricks' payload limit
SMALL_BODY_BYTES = 64 * 1024  # parsed on the event loop; a bigger body in a worker thread
_log = logging.getLogger("aifuncs.server")
WORKER = str(os.getpid())  # which worker process answered: operators (and a test) tell them apart

Work = Callable[[Request, Session, Any], Any]
AsyncWork = Callable[[Request, Session, Any], Awaitable[Any]]

_REST = RequestContext("rest")


@dataclass(frozen=True)
class Edge:
    """What every request to one app shares, resolved once by `app()`: the token check, and the runtime and
    catalog each request's session runs on (two apps in one process keep apart)."""

    auth: Authenticator
    runtime: Runtime
    catalog: Catalog

    def session(self, identity: Identity) -> Session:
        """A request's session: its caller, on the app's runtime and catalog; its usage rows say origin "rest"
        (a query route adds the body's labels and client id); a request its endpoint's rate limits hold back is
        answered 429 with the wait at once, never queued."""
        return Session(self.runtime, identity, self.catalog, context=_REST, wait_for_limits=False)


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
    return parse_json(raw) if len(raw) <= SMALL_BODY_BYTES else await run_in_threadpool(parse_json, raw)


def api(edge: Edge, work: Work | AsyncWork) -> Callable[[Request], Awaitable[Response]]:
    """A route: authenticate (the header alone) and make the caller's session, then read the body, work (in a
    thread, unless it is a coroutine that hands its blocking parts to one itself), answer JSON (or the error a
    client expects). Nothing of the body is read for a caller without a valid token."""
    is_async = inspect.iscoroutinefunction(work)
    auth = edge.auth

    async def endpoint(request: Request) -> Response:
        response: Response
        read = request.method in ("GET", "DELETE", "HEAD")
        try:
            known = auth.known(request)
            identity = known if known is not None else await run_in_threadpool(auth.identity, request)
            session = edge.session(identity)
            body = await _body(request)
            read = True
            if is_async:
                result = await work(request, session, body)
            else:
                result = await run_in_threadpool(work, request, session, body)
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
        response.headers["x-aifuncs-worker"] = WORKER
        return response

    return endpoint


async def health(request: Request) -> Response:
    """Readiness: 503 while a model of the server's in-process endpoints is still loading for the first time,
    then 200, with each such endpoint's state (`aifuncs.workers.ModelWorkers.health`)."""
    workers = getattr(request.app.state, "model_workers", None)
    if workers is None:
        return JSONResponse({"status": "ok"}, headers={"x-aifuncs-worker": WORKER})
    status, body = workers.health()
    return JSONResponse(body, status_code=status, headers={"x-aifuncs-worker": WORKER})


_OPEN = ("/health", "/.well-known/databricks-config", "/openapi.json")


async def _no_route(request: Request, error: Exception) -> Response:
    """A path or method no route serves: the JSON error every client reads, not Starlette's plain text."""
    status = getattr(error, "status_code", 404)
    if status == 405:
        found = ApiError(405, "METHOD_NOT_ALLOWED", f"{request.url.path} does not take {request.method}.")
    else:
        found = ApiError(404, "ENDPOINT_NOT_FOUND", f"No API at {request.url.path}; see /openapi.json.")
    return error_response(found)


NO_ROUTE: dict[Any, Any] = {404: _no_route, 405: _no_route}


def openapi_route(routes: list[Route]) -> Callable[[Request], Awaitable[Response]]:
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
