"""http_request: a row may ask only for paths under its connection's allowed_paths, and may not set the
headers that say where a request goes, who sends it or how it is framed.

The upstream is the project's FakeServer on 127.0.0.1, recording each raw request target it receives and the
key each request carried. Every disguise of a dot segment (percent-encoded, double-encoded, `..;`, `..\\`,
look-alikes, control characters) is refused before anything is sent; the paths that are allowed arrive
exactly as checked: decoded once, dot segments resolved, encoded once.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Iterator
from typing import Any
from urllib.parse import unquote

import duckdb
import pytest
from servers import FakeServer

import aifuncs

KEY = "sk-crm-paths-5150"

ESCAPES = [
    "/accounts/%2e%2e/admin",
    "/accounts/%2E%2E/admin",
    "/accounts/.%2e/admin",
    "/accounts/%2e./admin",
    "/accounts/%2e%2e%2fadmin",
    "/accounts%2f..%2fadmin",
    "/accounts/..;/admin",
    "/accounts/..;x=1/admin",
    "/accounts/..%3b/admin",
    "/accounts/..\\admin",
    "/accounts/..%5cadmin",
    "/accounts/%252e%252e/admin",
    "/accounts/%252e%252e%252fadmin",
    "/accounts/%25%32%65%25%32%65/admin",
    "/accounts/%c0%ae%c0%ae/admin",  # overlong UTF-8 for '.'
    "/accounts/\uff0e\uff0e/admin",  # fullwidth full stops
    "/accounts/.../admin",
    "/accounts/.. /admin",
    "/accounts/%00/../../admin",
    "/accounts/\x01",
    "/accounts/x%0d%0aHost: evil",
    "/accounts/../admin",
    "/accounts/../../admin",
    "/..",
    "//evil.example/accounts",
    "accounts/1",
]

RESERVED_HEADERS = [
    "Host",
    "authorization",
    "AUTHORIZATION",
    "Proxy-Authorization",
    "proxy-connection",
    "Forwarded",
    "X-Forwarded-For",
    "x-forwarded-host",
    "Content-Length",
    "Transfer-Encoding",
    "Connection",
    "X-HTTP-Method-Override",
    "X-Original-URL",
]

# (asked, what the upstream must receive): decoded once, dot segments resolved, encoded once
ALLOWED = [
    ("/accounts/a/../b", "/api/accounts/b"),
    ("/accounts/./c/", "/api/accounts/c/"),
    ("/accounts//d", "/api/accounts/d"),
    ("/accounts/%41da", "/api/accounts/Ada"),
    ("/accounts/caf%C3%A9", "/api/accounts/caf%C3%A9"),
    ("/accounts/x%3Fy?fields=name", "/api/accounts/x%3Fy?fields=name"),
    ("/accounts/100%25", "/api/accounts/100%25"),
    ("/accounts/e;v=1", "/api/accounts/e;v=1"),
]


@pytest.fixture
def crm(con: duckdb.DuckDBPyConnection, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeServer]:
    monkeypatch.setenv("CRM_KEY", KEY)
    with FakeServer(keep_bodies=True) as upstream:
        aifuncs.endpoints.create(
            "crm", kind="http", base_url=upstream.url + "/api", api_key_env="CRM_KEY",
            allowed_methods=["GET", "POST"], allowed_paths=["/accounts"], max_retries=0,
        )  # fmt: skip
        aifuncs.endpoints.create(
            "crm_keyed", kind="http", base_url=upstream.url + "/api", api_key_env="CRM_KEY",
            allowed_paths=["/accounts"], auth_header="X-Api-Key", auth_scheme="", headers={"X-Tenant": "acme"},
            max_retries=0,
        )  # fmt: skip
        yield upstream


def _request(
    con: duckdb.DuckDBPyConnection, path: str, headers: dict[str, str] | None = None, conn: str = "crm"
) -> Any:
    """One http_request row; the path and headers go in as data (a table), never spliced into SQL."""
    con.execute("CREATE OR REPLACE TEMP TABLE one (p VARCHAR, h MAP(VARCHAR, VARCHAR))")
    con.execute(
        "INSERT INTO one VALUES (?, MAP(?, ?))", [path, list(headers or {}), list((headers or {}).values())]
    )
    return aifuncs.sql(
        con, f"SELECT http_request(conn => '{conn}', method => 'GET', path => p, headers => h) FROM one"
    ).fetchall()[0][0]


def _leniently(path: str) -> str:
    """The path as the most lenient server could read it: decoded until it stops changing, backslashes as
    slashes, `;` parameters dropped, dot segments resolved."""
    while (decoded := unquote(path)) != path:
        path = decoded
    path = re.sub(r";[^/]*", "", path.split("?", 1)[0].replace("\\", "/"))
    return posixpath.normpath(path)


def test_no_disguised_dot_segment_reaches_the_upstream(
    con: duckdb.DuckDBPyConnection, crm: FakeServer
) -> None:
    for path in ESCAPES:
        with pytest.raises(duckdb.Error, match=r"Connection 'crm'") as refused:
            _request(con, path)
        assert "stay under it" in str(refused.value) or "allows paths under /accounts" in str(
            refused.value
        ), path
    seen = crm.stats
    assert seen.paths == [] and seen.auth == set()  # nothing was sent, so the key went nowhere


def test_allowed_paths_arrive_exactly_as_checked(con: duckdb.DuckDBPyConnection, crm: FakeServer) -> None:
    for path, _ in ALLOWED:
        assert _request(con, path)["status_code"] == 200, path
    seen = crm.stats
    assert seen.paths == [arrived for _, arrived in ALLOWED]
    assert all(_leniently(p).startswith("/api/accounts/") for p in seen.paths)
    assert seen.auth == {f"Bearer {KEY}"}


def test_a_row_may_not_set_the_connections_headers(con: duckdb.DuckDBPyConnection, crm: FakeServer) -> None:
    for header in RESERVED_HEADERS:
        with pytest.raises(
            duckdb.Error, match=rf"the header '{re.escape(header)}' is the connection's to set"
        ):
            _request(con, "/accounts/1", {header: "evil.example"})
    with pytest.raises(duckdb.Error, match="the header 'x-api-key' is the connection's to set"):
        _request(con, "/accounts/1", {"x-api-key": "mine"}, conn="crm_keyed")  # its key's own header
    with pytest.raises(duckdb.Error, match="the header 'x-tenant' is set by the connection itself"):
        _request(con, "/accounts/1", {"x-tenant": "other"}, conn="crm_keyed")
    with pytest.raises(duckdb.Error, match="the header 'X-Note' has a control character"):
        _request(con, "/accounts/1", {"X-Note": "a\r\nHost: evil.example"})
    with pytest.raises(duckdb.Error, match="the header 'Bad Name' is not a valid header name"):
        _request(con, "/accounts/1", {"Bad Name": "x"})
    assert crm.stats.paths == []
    # an ordinary header still goes, and the key goes under the connection's header only
    assert (
        _request(con, "/accounts/1", {"Accept": "application/json"}, conn="crm_keyed")["status_code"] == 200
    )
    assert crm.stats.paths == ["/api/accounts/1"] and crm.stats.auth == {KEY}
