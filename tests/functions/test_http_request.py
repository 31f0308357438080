"""http_request: one HTTP request per row to a connection (an `http` endpoint), governed like a model call.

A small server of our own on 127.0.0.1 echoes what it received (method, path, query, headers, body) and
answers the status a path asks for."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import duckdb
import pytest

import aifuncs
import aifuncs.governance as gov
from aifuncs.errors import PermissionDenied

KEY = "sk-crm-secret-9876"


class EchoServer:
    """Answers `/status/N` with N; any other path with 200. The reply is what it received, as JSON."""

    def __init__(self, delay_s: float = 0.0) -> None:
        self.seen: list[dict[str, Any]] = []
        self.in_flight = self.max_in_flight = 0
        lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _answer(self) -> None:
                with lock:
                    owner.in_flight += 1
                    owner.max_in_flight = max(owner.max_in_flight, owner.in_flight)
                try:
                    time.sleep(delay_s)
                    url = urlsplit(self.path)
                    length = int(self.headers.get("content-length") or 0)
                    received = {
                        "method": self.command,
                        "path": url.path,
                        "query": dict(parse_qsl(url.query)),
                        "headers": {k.lower(): v for k, v in self.headers.items()},
                        "body": self.rfile.read(length).decode() if length else None,
                    }
                    with lock:
                        owner.seen.append(received)
                    status = int(url.path.rsplit("/", 1)[1]) if "/status/" in url.path else 200
                    body = json.dumps(received).encode()
                    self.send_response(status)
                    self.send_header("content-type", "application/json")
                    self.send_header("content-length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                finally:
                    with lock:
                        owner.in_flight -= 1

            do_GET = do_POST = do_PUT = do_DELETE = _answer

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> EchoServer:
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture
def crm(con: duckdb.DuckDBPyConnection, monkeypatch: pytest.MonkeyPatch) -> Iterator[EchoServer]:
    monkeypatch.setenv("CRM_KEY", KEY)
    with EchoServer() as server:
        aifuncs.endpoints.create(
            "crm", kind="http", base_url=server.url + "/api", api_key_env="CRM_KEY",
            allowed_methods=["GET", "POST"], allowed_paths=["/accounts", "/status"],
        )  # fmt: skip
        yield server


def test_each_row_is_a_request_and_every_status_is_data(
    con: duckdb.DuckDBPyConnection, crm: EchoServer
) -> None:
    rows = aifuncs.sql(
        con,
        """SELECT id, http_request(conn => 'crm', method => 'GET', path => '/accounts/' || id,
                                   headers => map('Accept', 'application/json'), params => map('fields', 'name')) AS r
           FROM VALUES (41), (42) AS t(id) ORDER BY id""",
        dialect="databricks",
    ).fetchall()
    assert [r[1]["status_code"] for r in rows] == [200, 200]
    echoed = json.loads(rows[1][1]["text"])
    assert echoed["method"] == "GET" and echoed["path"] == "/api/accounts/42"
    assert echoed["query"] == {"fields": "name"} and echoed["headers"]["accept"] == "application/json"
    assert echoed["headers"]["authorization"] == "Bearer ***"  # the key reached the server, not the rows
    assert crm.seen[0]["headers"]["authorization"] == f"Bearer {KEY}"
    posted = aifuncs.sql(
        con,
        """SELECT http_request('crm', 'POST', '/accounts', '{"name": "Ada"}') AS r""",
        dialect="databricks",
    ).fetchall()[0][0]
    assert posted["status_code"] == 200 and json.loads(json.loads(posted["text"])["body"]) == {"name": "Ada"}
    assert crm.seen[-1]["headers"]["content-type"] == "application/json"
    missing = aifuncs.sql(
        con,
        "SELECT http_request(conn => 'crm', method => 'GET', path => '/status/404') AS r",
        dialect="databricks",
    ).fetchall()[0][0]
    assert missing["status_code"] == 404  # an answer, not an error
    assert KEY not in json.dumps(rows + [posted, missing]) and KEY not in repr(
        aifuncs.runtime.default_runtime().provider(aifuncs.endpoints.get("crm"))
    )


def test_what_a_connection_does_not_allow_fails_before_anything_is_sent(
    con: duckdb.DuckDBPyConnection, crm: EchoServer
) -> None:
    for method, path, message in [
        ("DELETE", "/accounts/1", "allows GET, POST requests, not 'DELETE'"),
        ("GET", "/admin/users", "allows paths under /accounts, /status, not '/admin/users'"),
        ("GET", "/accounts/../admin", "must start with '/' and stay under it"),
    ]:
        with pytest.raises(duckdb.Error, match=message):
            aifuncs.sql(
                con,
                f"SELECT http_request(conn => 'crm', method => '{method}', path => '{path}')",
                dialect="databricks",
            ).fetchall()
    aifuncs.endpoints.create("scorer", kind="python", function="sample_models:doubled", returns="DOUBLE")
    with pytest.raises(aifuncs.AifuncsError, match="http_request needs a connection"):
        aifuncs.sql(
            con, "SELECT http_request(conn => 'scorer', method => 'GET', path => '/x')", dialect="databricks"
        )
    assert crm.seen == []


def test_requests_run_concurrently_and_are_governed_like_model_calls(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CRM_KEY", KEY)
    monkeypatch.delenv("AIFUNCS_TOKEN", raising=False)
    with EchoServer(delay_s=0.05) as server:
        aifuncs.endpoints.create("crm", kind="http", base_url=server.url, api_key_env="CRM_KEY")
        aifuncs.endpoints.put_ai_gateway("crm", {"inference_table_config": {"enabled": True}})
        con = aifuncs.connect()
        rows = aifuncs.sql(
            con,
            "SELECT http_request(conn => 'crm', method => 'GET', path => '/accounts/' || i) FROM range(20) t(i)",
        ).fetchall()
        assert len(rows) == 20 and server.max_in_flight > 1
        usage = con.sql(
            "SELECT count(*), sum(rows), min(function) FROM aifuncs_usage WHERE endpoint = 'crm'"
        ).fetchall()
        assert usage == [(20, 20, "http_request")]
        logged = con.sql("SELECT request, response FROM aifuncs_payloads").fetchall()
        assert len(logged) == 20 and all(KEY not in json.dumps(row) for row in logged)
        assert any('"/accounts/7"' in request for request, _ in logged)

        gov.create_user("bob")
        aifuncs.endpoints.update_permissions("crm", [{"user_name": "bob", "permission_level": "CAN_VIEW"}])
        bob = aifuncs.connect(token=gov.create_token("bob"))
        sent = len(server.seen)
        with pytest.raises(PermissionDenied, match="'bob' may not query endpoint 'crm'"):
            aifuncs.sql(bob, "SELECT http_request(conn => 'crm', method => 'GET', path => '/a')")
        aifuncs.endpoints.set_rate_limits("crm", [{"calls": 1, "key": "endpoint"}])
        one = "SELECT http_request(conn => 'crm', method => 'GET', path => '/a')"
        assert aifuncs.sql(con, one, wait_for_limits=False).fetchall()[0][0]["status_code"] == 200
        with pytest.raises(duckdb.Error, match="rate limited"):
            aifuncs.sql(con, one, wait_for_limits=False).fetchall()
        assert len(server.seen) == sent + 1


def test_an_unreachable_connection_names_itself(con: duckdb.DuckDBPyConnection) -> None:
    from servers import free_port

    aifuncs.endpoints.create("gone", kind="http", base_url=f"http://127.0.0.1:{free_port()}", max_retries=0)
    with pytest.raises(duckdb.Error, match="Connection 'gone': connection to http://127.0.0.1:"):
        aifuncs.sql(con, "SELECT http_request(conn => 'gone', method => 'GET', path => '/x')").fetchall()
