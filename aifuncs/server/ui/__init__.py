"""The web UI at /ui: server-rendered pages (Jinja2, htmx, uPlot, all served from this package) on the same
governance as the REST API.

    app = aifuncs.server.app()      # mounts ui_app(...) at /ui
    aifuncs ui                      # a local server on 127.0.0.1 and a sign-in link for the home's owner

`_sessions.py` signs browsers in (a token, or the owner's one-time link) and `_web.py` wraps every page: the
signed-in principal's session (on the server's runtime and catalog), CSRF on each change, errors as pages. Pages:
`_endpoints.py` (list, endpoint, gateway, permissions, request log `_logs.py`, charts from `_stats.py`),
`_pages.py` (usage, SQL, jobs, tokens, principals), `_playground.py` (answers streamed side by side).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from aifuncs.server._invoke import Bindings
from aifuncs.server._routing import Edge
from aifuncs.server.ui._endpoints import ROUTES as ENDPOINT_ROUTES
from aifuncs.server.ui._pages import ROUTES as PAGE_ROUTES
from aifuncs.server.ui._playground import ROUTES as PLAYGROUND_ROUTES
from aifuncs.server.ui._sessions import Sessions
from aifuncs.server.ui._signin import sign_in, sign_out
from aifuncs.server.ui._web import HEADERS, SERVER_APP, Ui, page

__all__ = ["Sessions", "sign_in_link", "ui_app"]

STATIC = Path(__file__).parent / "static"


def sign_in_link(base_url: str, home: Path) -> str:
    """A link that signs the home's owner in once (what `aifuncs ui` and a loopback `aifuncs serve` print)."""
    return f"{base_url.rstrip('/')}/ui/login?ticket={Sessions(home).ticket()}"


async def _home_page(request: Request) -> Response:
    return RedirectResponse("/ui/endpoints", 303, headers=HEADERS)


async def _not_found(request: Request, error: Exception) -> Response:
    return Response("Not found", status_code=getattr(error, "status_code", 404), headers=HEADERS)


class _UiApp(Starlette):
    """The UI's app, mounted in the server's: keeps a reference to the server's app in the scope before its own
    replaces `scope["app"]`, so pages read what the server's lifespan set (its model workers)."""

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        scope.setdefault(SERVER_APP, scope.get("app"))
        await super().__call__(scope, receive, send)


def ui_app(edge: Edge, statements: Any, bindings: Bindings) -> Starlette:
    """The UI of the server whose requests `edge` makes sessions for: its runtime, catalog and home."""
    ui = Ui(edge, statements, bindings)
    routes: list[Any] = [
        Route("/", _home_page, methods=["GET"]),
        Route("/login", sign_in(ui), methods=["GET", "POST"]),
        Route("/logout", sign_out(ui), methods=["POST"]),
        Mount("/static", app=StaticFiles(directory=STATIC), name="static"),
    ]
    routes += [
        Route(path, page(ui, work), methods=methods)
        for path, work, methods in [*ENDPOINT_ROUTES, *PAGE_ROUTES, *PLAYGROUND_ROUTES]
    ]
    return _UiApp(routes=routes, exception_handlers={404: _not_found, 405: _not_found})
