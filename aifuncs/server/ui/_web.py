"""What every UI route shares: the signed-in principal from the session cookie, CSRF on every change, the
policy check's errors as pages (never a traceback), templates, and headers that keep the pages to this origin.

A handler is `work(ui: Ui, request, me) -> Response | (template, context)`, run in a worker thread (the
catalog, the governance stores and the logs are SQLite). `me` is a `Me`: the signed-in principal's session (on
the server's runtime and catalog) and its CSRF token.
"""

from __future__ import annotations

import hmac
import inspect
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote

import jinja2
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from aifuncs.catalog import Catalog
from aifuncs.errors import AifuncsError
from aifuncs.governance import Directory, Identity, Principal
from aifuncs.server._errors import ApiError, from_aifuncs
from aifuncs.server._invoke import Bindings
from aifuncs.server._routing import Edge
from aifuncs.server.ui._sessions import COOKIE, Sessions, csrf_token
from aifuncs.session import Session

__all__ = [
    "HEADERS",
    "SERVER_APP",
    "Me",
    "Ui",
    "confirm_step",
    "form_of",
    "model_workers",
    "origin_of",
    "page",
    "same_origin",
]

_log = logging.getLogger("aifuncs.server")
_TEMPLATES = Path(__file__).parent / "templates"

# Everything from this origin only: no inline script, no other host, no framing; the sign-in link's ticket
# never leaves in a Referer. "same-origin", not "no-referrer": under no-referrer a browser sends `Origin: null`
# with a form's POST, and the origin check below would refuse every form (sign-in included).
HEADERS = {
    "content-security-policy": "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:;"
    " connect-src 'self'; font-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
    "referrer-policy": "same-origin",
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "cache-control": "no-store",
}
_CHANGES = ("POST", "PUT", "PATCH", "DELETE")
SERVER_APP = "aifuncs.server_app"  # the scope key of the server's app that mounts the UI


def model_workers(request: Request) -> Any:
    """The server's model workers (None where models run in its process, or no server mounts the UI)."""
    server = request.scope.get(SERVER_APP)
    return getattr(getattr(server, "state", None), "model_workers", None)


@dataclass
class Me:
    """The signed-in principal's session (its catalog: every action through the same policy check as the REST
    API; the server's runtime) and its browser session's CSRF token."""

    session: Session
    csrf: str

    @property
    def principal(self) -> Principal:
        return self.session.principal

    @property
    def catalog(self) -> Catalog:
        return self.session.catalog

    @property
    def home(self) -> Path:
        return self.session.home

    @property
    def name(self) -> str:
        return self.principal.name

    @property
    def identity(self) -> Identity:
        return self.session.identity

    def directory(self) -> Directory:
        return Directory(self.home / "catalog.db", self.principal)


class Ui:
    """The UI's state, shared by its routes: the server's edge (sessions on its runtime and catalog), browser
    sessions, templates, the server's statements and its query routes' bindings."""

    def __init__(self, edge: Edge, statements: Any, bindings: Bindings) -> None:
        self.edge = edge
        self.home = edge.auth.home
        self.sessions = Sessions(self.home)
        self.statements = statements
        self.bindings = bindings
        self.templates = jinja2.Environment(loader=jinja2.FileSystemLoader(_TEMPLATES), autoescape=True)
        self.templates.filters["q"] = lambda text: quote(str(text), safe="")

    def render(self, request: Request, name: str, context: dict[str, Any], status: int = 200) -> HTMLResponse:
        html = self.templates.get_template(name).render(request=request, **context)
        return HTMLResponse(html, status_code=status, headers=HEADERS)

    def me(self, request: Request) -> Me | None:
        cookie = request.cookies.get(COOKIE)
        principal = self.sessions.principal(cookie)
        if principal is None or cookie is None:
            return None
        return Me(self.edge.session(Identity(principal, self.home)), csrf_token(cookie))


Work = Callable[[Ui, Request, Me], Any]


def origin_of(request: Request) -> str:
    return f"{request.url.scheme}://{request.url.netloc}"


def same_origin(request: Request) -> bool:
    """A change must come from a page of this server: Origin (or Referer), when the browser sends one, names it."""
    here = origin_of(request)
    origin = request.headers.get("origin")
    if origin is not None:
        return origin == here
    referer = request.headers.get("referer")
    return referer is None or referer == here or referer.startswith(here + "/")


_FORM_BYTES = 1 << 20


async def form(request: Request) -> dict[str, str]:
    """A form's fields (application/x-www-form-urlencoded, at most 1 MiB; the pages send no other kind)."""
    if not request.headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
        return {}
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > _FORM_BYTES:
            raise ApiError(413, "REQUEST_TOO_LARGE", "The form is over 1 MiB.")
    request.state.form = dict(parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))
    return dict(request.state.form)


async def form_of(request: Request) -> dict[str, str]:
    """The form, read once (the CSRF check may have read it already)."""
    kept = getattr(request.state, "form", None)
    return dict(kept) if kept is not None else await form(request)


def confirm_step(
    request: Request, form: dict[str, str], *, title: str, text: str, button: str, back: str
) -> tuple[str, dict[str, Any]] | None:
    """A change that cannot be undone asks first, on a page of its own (no script needed): None once the form
    says it is confirmed, else that page, which posts the same fields again, confirmed."""
    if form.get("confirmed") == "yes":
        return None
    fields = {k: v for k, v in form.items() if k not in ("csrf", "confirmed")}
    context = {"title": title, "text": text, "button": button, "back": back, "fields": fields}
    return "confirm.html", {"action": request.url.path, **context}


async def _csrf_ok(request: Request, me: Me) -> bool:
    given = request.headers.get("x-csrf-token")
    if given is None:
        given = (await form_of(request)).get("csrf", "")
    return bool(given) and hmac.compare_digest(str(given), me.csrf) and same_origin(request)


def page(ui: Ui, work: Work) -> Callable[[Request], Awaitable[Response]]:
    """A UI route: signed in (else the sign-in page), CSRF checked on changes, the work in a thread, errors as
    a page (or, for htmx and scripts, a short message) with the status the REST API would give."""
    is_async = inspect.iscoroutinefunction(work)

    async def route(request: Request) -> Response:
        me = await run_in_threadpool(ui.me, request)
        if me is None:
            if request.method in _CHANGES or _wants_fragment(request):
                return _message(ui, request, None, 401, "Your session has ended: sign in again.")
            return RedirectResponse(
                "/ui/login?next=" + quote(request.url.path, safe="/"), 303, headers=HEADERS
            )
        if request.method in _CHANGES and not await _csrf_ok(request, me):
            return _message(
                ui, request, me, 403, "This change did not come from a page of this server: reload it."
            )
        try:
            result = (
                await work(ui, request, me) if is_async else await run_in_threadpool(work, ui, request, me)
            )
        except ApiError as error:
            return _message(ui, request, me, error.status, error.message)
        except AifuncsError as error:
            found = from_aifuncs(error)
            return _message(ui, request, me, found.status, found.message)
        except Exception:
            _log.exception("UI %s %s failed", request.method, request.url.path)
            return _message(ui, request, me, 500, "The server failed on this page; see its log.")
        if isinstance(result, Response):
            for key, value in HEADERS.items():
                result.headers.setdefault(key, value)
            return result
        template, context = result
        return ui.render(request, template, {"me": me, **context})

    return route


def _wants_fragment(request: Request) -> bool:
    return request.headers.get("hx-request") == "true" or "application/json" in request.headers.get(
        "accept", ""
    )


def _message(ui: Ui, request: Request, me: Me | None, status: int, text: str) -> Response:
    if _wants_fragment(request):
        response = ui.render(request, "_message.html", {"text": text, "status": status}, status)
        response.headers["hx-reswap"] = "innerHTML"
        response.headers["hx-retarget"] = "#messages"
        return response
    return ui.render(request, "message.html", {"me": me, "text": text, "status": status}, status)
