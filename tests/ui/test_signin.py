"""Signing in: a token or the owner's one-time link gives an HttpOnly, SameSite=Strict session; every change
needs the session's CSRF token from this origin; a revoked token ends its session; signing out ends it."""

from __future__ import annotations

import aifuncs
import aifuncs.governance as gov
from aifuncs.server.ui import sign_in_link

from .conftest import BASE, Ui


def test_pages_need_a_session(ui: Ui) -> None:
    client = ui.client()
    answer = client.get("/ui/endpoints")
    assert answer.status_code == 303 and answer.headers["location"].startswith("/ui/login")
    assert client.post("/ui/tokens", data={"comment": "x"}).status_code == 401
    page = client.get("/ui/login")
    assert page.status_code == 200 and 'type="password"' in page.text


def test_a_token_signs_in_with_a_strict_cookie(ui: Ui) -> None:
    client = ui.client()
    refused = client.post("/ui/login", data={"token": "aif_u_" + "x" * 36})
    assert refused.status_code == 401 and "does not sign in" in refused.text
    signed = client.post("/ui/login", data={"token": ui.tokens["alice"], "next": "https://evil.example/"})
    assert signed.status_code == 303 and signed.headers["location"] == "/ui/"  # never another site
    cookie = signed.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie and "path=/ui" in cookie
    assert ui.tokens["alice"] not in signed.headers["set-cookie"]  # a session id, not the token
    page = client.get("/ui/endpoints")
    assert page.status_code == 200 and "alice" in page.text
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]


def test_the_owners_link_works_once(ui: Ui) -> None:
    link = sign_in_link(BASE, ui.home).removeprefix(BASE)
    first, second = ui.client(), ui.client()
    assert first.get(link).status_code == 303
    page = first.get("/ui/endpoints")
    assert page.status_code == 200 and ">admin</small>" in page.text  # the owner is an admin
    assert second.get(link).status_code == 401  # spent
    assert second.get("/ui/login?ticket=made-up").status_code == 401


def test_every_change_needs_the_csrf_token_from_this_origin(ui: Ui) -> None:
    client = ui.client("alice")
    before = len(gov.list_tokens("alice"))
    assert client.post("/ui/tokens", data={"comment": "no csrf"}).status_code == 403
    token = ui.csrf(client)
    assert client.post("/ui/tokens", data={"csrf": "0" * 64, "comment": "wrong"}).status_code == 403
    assert (
        client.post(
            "/ui/tokens", data={"csrf": token}, headers={"origin": "https://evil.example"}
        ).status_code
        == 403
    )
    assert len(gov.list_tokens("alice")) == before  # nothing was made
    made = client.post("/ui/tokens", data={"csrf": token, "comment": "laptop"})
    assert made.status_code == 200 and "aif_u_" in made.text
    assert len(gov.list_tokens("alice")) == before + 1


def test_a_revoked_token_ends_its_session_and_sign_out_ends_it_too(ui: Ui) -> None:
    client = ui.client("bob")
    assert client.get("/ui/endpoints").status_code == 200
    gov.revoke_token(next(t.id for t in gov.list_tokens("bob")))
    assert client.get("/ui/endpoints").status_code == 303  # back to sign-in
    alice = ui.client("alice")
    assert alice.post("/ui/logout", data={"csrf": ui.csrf(alice)}).status_code == 303
    assert alice.get("/ui/endpoints").status_code == 303


def test_a_deleted_principals_session_ends(ui: Ui) -> None:
    client = ui.client("alice")
    gov.delete_principal("alice")
    assert client.get("/ui/endpoints").status_code == 303
    assert aifuncs.endpoints.get("llm").name == "llm"
