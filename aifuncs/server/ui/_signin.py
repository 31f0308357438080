"""Signing in and out: a token typed into the form, or the owner's one-time link; an HttpOnly, SameSite=Strict
cookie holds the session."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from aifuncs.server.ui._sessions import COOKIE, SESSION_S, SignInFailed
from aifuncs.server.ui._web import HEADERS, Ui, form_of, same_origin

__all__ = ["sign_in", "sign_out"]


def _next(request: Request, given: object) -> str:
    """Where to go once signed in: a page of the UI, never another site."""
    path = str(given or "")
    return path if path.startswith("/ui/") and not path.startswith("/ui//") and "\\\\" not in path else "/ui/"


def _signed_in(request: Request, cookie: str, to: str) -> Response:
    response = RedirectResponse(to, 303, headers=HEADERS)
    response.set_cookie(
        COOKIE,
        cookie,
        max_age=SESSION_S,
        path="/ui",
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )
    return response


def sign_in(ui: Ui) -> Callable[[Request], Awaitable[Response]]:
    async def route(request: Request) -> Response:
        error = None
        if request.method == "GET":
            ticket = request.query_params.get("ticket")
            if ticket is None:
                return ui.render(
                    request,
                    "login.html",
                    {"me": None, "error": None, "next": _next(request, request.query_params.get("next"))},
                )
            try:
                cookie = await run_in_threadpool(ui.sessions.redeem, ticket)
            except SignInFailed as failed:
                error = str(failed)
            else:
                return _signed_in(request, cookie, "/ui/")
            return ui.render(request, "login.html", {"me": None, "error": error, "next": "/ui/"}, 401)
        form = await form_of(request)
        to = _next(request, form.get("next"))
        if not same_origin(request):
            return ui.render(
                request,
                "login.html",
                {"me": None, "error": "Sign in from this server's own page.", "next": to},
                403,
            )
        try:
            cookie = await run_in_threadpool(ui.sessions.sign_in, str(form.get("token") or ""))
        except SignInFailed as failed:
            return ui.render(request, "login.html", {"me": None, "error": str(failed), "next": to}, 401)
        return _signed_in(request, cookie, to)

    return route


def sign_out(ui: Ui) -> Callable[[Request], Awaitable[Response]]:
    async def route(request: Request) -> Response:
        cookie = request.cookies.get(COOKIE)
        me = await run_in_threadpool(ui.me, request)
        form = await form_of(request)
        if me is not None and (str(form.get("csrf") or "") != me.csrf or not same_origin(request)):
            return ui.render(
                request,
                "message.html",
                {"me": me, "text": "Sign out from this server's page.", "status": 403},
                403,
            )
        await run_in_threadpool(ui.sessions.sign_out, cookie)
        response = RedirectResponse("/ui/login", 303, headers=HEADERS)
        response.delete_cookie(COOKIE, path="/ui")
        return response

    return route
