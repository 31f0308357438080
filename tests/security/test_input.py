"""Input before identity, and bad input as a 400 that names the problem (never a 500).

A caller without a valid token gets 401 from the header alone: nothing of its body is read, so a body that
is huge, malformed or never finishes still gets 401 at once. An authenticated caller's bad body (nesting
past 64, an integer of thousands of digits, NaN, a lone surrogate, a null ACL entry) or bad path parameter
(a non-ASCII digit as a chunk index) is a 400 saying what is wrong. /.well-known/databricks-config names the
server's own address or its configured public URL, never the request's Host.
"""

from __future__ import annotations

import socket
import time
from urllib.parse import urlsplit

import httpx
import pytest

from security.conftest import Secured, Serve

INVOKE = "/serving-endpoints/llm/invocations"
CHAT = {"messages": [{"role": "user", "content": "hi"}]}


def _raw(url: str, head: bytes, body: bytes = b"", wait_s: float = 20.0) -> tuple[bytes, float, bool]:
    """Send `head` and `body` on a socket, then read: (what came back, seconds to the first byte, whether
    the server then closed the connection)."""
    parts = urlsplit(url)
    with socket.create_connection((parts.hostname, parts.port), timeout=wait_s) as sock:
        started = time.monotonic()
        sock.sendall(head + body)
        first = sock.recv(65536)
        took = time.monotonic() - started
        received, closed = first, False
        sock.settimeout(5)
        try:
            while chunk := sock.recv(65536):
                received += chunk
            closed = True
        except TimeoutError:
            pass
        return received, took, closed


def _status(response: bytes) -> int:
    return int(response.split(b" ", 2)[1])


def _post_head(path: str, length: int, token: str | None = None) -> bytes:
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    return (
        f"POST {path} HTTP/1.1\r\nHost: x\r\n{auth}Content-Type: application/json\r\n"
        f"Content-Length: {length}\r\n\r\n"
    ).encode()


def test_without_a_token_the_body_is_never_read(secured: Secured) -> None:
    # a body that would never finish: 401 at once, and the connection closed (not kept to drain it)
    answer, took, closed = _raw(secured.url, _post_head(INVOKE, 1_000_000), b'{"messages": [')
    assert _status(answer) == 401 and took < 5 and closed
    # a body declared over the 16 MB limit: 401, not 413
    answer, _, _ = _raw(secured.url, _post_head(INVOKE, 100 * 1024 * 1024), b"{")
    assert _status(answer) == 401
    answer, _, _ = _raw(secured.url, _post_head(INVOKE, 1_000_000, "not-a-token"), b"{")
    assert _status(answer) == 401
    for body in [b"[" * 5000 + b"]" * 5000, b'{"n": ' + b"9" * 5000 + b"}", b"{not json", b"\xff\xfe"]:
        response = httpx.post(secured.url + INVOKE, content=body, timeout=30)
        assert response.status_code == 401, body[:20]
        assert response.headers["www-authenticate"] == "Bearer"
    assert secured.upstream.stats.requests == 0


@pytest.mark.parametrize(
    ("body", "named"),
    [
        (b"[" * 5000 + b"]" * 5000, "more than 64 deep"),
        (
            b'{"messages": [{"role": "user", "content": "hi"}], "x": ' + b"[" * 65 + b"]" * 65 + b"}",
            "more than 64 deep",
        ),
        (
            b'{"messages": [{"role": "user", "content": "hi"}], "max_tokens": ' + b"9" * 5000 + b"}",
            "5000 digits",
        ),
        (
            b'{"messages": [{"role": "user", "content": "hi"}], "temperature": 1e999}',
            "too large for a double",
        ),
        (b'{"messages": [{"role": "user", "content": "hi"}], "temperature": NaN}', "NaN, which is not JSON"),
        (b'{"messages": [{"role": "user", "content": "hi \\ud800 there"}]}', "lone UTF-16 surrogate"),
        (b'{"messages": [{"role": "user", "\\udfff": "x"}]}', "lone UTF-16 surrogate"),
    ],
)
def test_a_bad_body_is_a_400_naming_the_problem(secured: Secured, body: bytes, named: str) -> None:
    response = secured.call("alice", "POST", INVOKE, content=body)
    assert response.status_code == 400, response.text
    assert named in response.json()["message"]
    assert response.json()["error_code"] == "MALFORMED_REQUEST"
    assert secured.upstream.stats.requests == 0


def test_bad_acl_entries_and_chunk_indexes_are_400s(secured: Secured) -> None:
    endpoint_id = secured.call("admin", "GET", "/api/2.0/serving-endpoints/llm").json()["id"]
    path = f"/api/2.0/permissions/serving-endpoints/{endpoint_id}"
    for entries, named in [
        ([None], "got null"),
        (["alice"], "got str"),
        ([{"user_name": ["alice"], "permission_level": "CAN_QUERY"}], "names and level as text"),
        ([{"user_name": "alice", "permission_level": None}], "names and level as text"),
    ]:
        for method in ("PUT", "PATCH"):
            response = secured.call("admin", method, path, json={"access_control_list": entries})
            assert response.status_code == 400, (entries, response.text)
            assert (
                "access_control_list entry" in response.json()["message"]
                and named in response.json()["message"]
            )
    statement = secured.call(
        "admin", "POST", "/api/2.0/sql/statements", json={"statement": "SELECT 1 AS x", "wait_timeout": "30s"}
    ).json()
    assert statement["status"]["state"] == "SUCCEEDED", statement
    chunks = f"/api/2.0/sql/statements/{statement['statement_id']}/result/chunks/"
    assert secured.call("admin", "GET", chunks + "0").json()["data_array"] == [["1"]]
    for index in ("\u0661", "\u00b2", "-1", "1e3", "9" * 40):
        response = secured.call("admin", "GET", chunks + index)
        assert response.status_code == 400, (index, response.text)
        assert "is not a chunk number" in response.json()["message"]


def test_databricks_config_never_echoes_the_host_header(secured: Secured, serve: Serve) -> None:
    answer = httpx.get(secured.url + "/.well-known/databricks-config", headers={"Host": "evil.example"})
    assert answer.status_code == 200
    assert answer.json()["oidc_endpoint"] == secured.url + "/oidc"
    with serve(args=["--public-url", "https://ai.example.com/"]) as url:
        answer = httpx.get(url + "/.well-known/databricks-config", headers={"Host": "evil.example"})
        assert answer.json()["oidc_endpoint"] == "https://ai.example.com/oidc"
