"""The request log page of a real `aifuncs serve`, read over HTTP, on SQLite and on PostgreSQL: requests asked over
REST show on the endpoint's log page, each principal seeing what it may. On PostgreSQL a second host (its own
AIFUNCS_HOME, the same database) answers too, and its rows show on the first host's page: one inference table."""

from __future__ import annotations

import contextlib
import os
import re
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from servers import FakeServer, free_port, running

import aifuncs
import aifuncs.governance as gov

PRINCIPALS = ("admin", "alice", "bob", "mallory")


@contextlib.contextmanager
def _serve(home: Path, logs: Path) -> Iterator[str]:
    port = free_port()
    env = {**os.environ, "AIFUNCS_HOME": str(home), "PYTHONPATH": str(Path(__file__).parents[1])}
    env.pop("AIFUNCS_TOKEN", None)
    command = [sys.executable, "-m", "aifuncs.cli", "serve", "--port", str(port)]
    with running(command, f"http://127.0.0.1:{port}/health", logs / f"serve-{port}.log", env):
        yield f"http://127.0.0.1:{port}"


def _browser(url: str, token: str) -> httpx.Client:
    client = httpx.Client(base_url=url, timeout=60)
    signed = client.post("/ui/login", data={"token": token, "next": "/ui/endpoints"})
    assert signed.status_code == 303, signed.text
    return client


def _ask(url: str, token: str, text: str) -> None:
    answer = httpx.post(
        url + "/serving-endpoints/llm/invocations",
        json={"messages": [{"role": "user", "content": text}]},
        headers={"Authorization": f"Bearer {token}"},
        timeout=60,
    )
    assert answer.status_code == 200, answer.text


def _shown(client: httpx.Client, query: str, expected: int, timeout_s: float = 30.0) -> str:
    """The log page once it lists `expected` rows (rows reach the table off the request path)."""
    deadline = time.monotonic() + timeout_s
    while True:
        page = client.get("/ui/endpoints/llm?tab=logs" + query)
        assert page.status_code == 200, page.text
        if page.text.count("<tr id=") >= expected or time.monotonic() > deadline:
            return page.text
        time.sleep(0.2)


def test_a_servers_log_page_on_both_backends(
    backend: str, home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AIFUNCS_TOKEN", raising=False)
    gov.create_user("admin", admin=True)
    for name in PRINCIPALS[1:]:
        gov.create_user(name)
    tokens = {name: gov.create_token(name) for name in PRINCIPALS}
    with FakeServer() as upstream:
        aifuncs.endpoints.create("llm", kind="openai", model="m", base_url=upstream.url + "/v1")
        aifuncs.endpoints.update_permissions(
            "llm",
            [{"user_name": "alice", "permission_level": "CAN_QUERY"},
             {"user_name": "bob", "permission_level": "CAN_VIEW"}],
        )  # fmt: skip
        aifuncs.endpoints.put_ai_gateway("llm", {"inference_table_config": {"enabled": True}})
        with _serve(home, tmp_path) as url:
            _ask(url, tokens["alice"], "alices-question")
            _ask(url, tokens["admin"], "admins-question")
            admin = _browser(url, tokens["admin"])
            assert _shown(admin, "", 2).count("<tr id=") == 2
            assert _shown(admin, "&q=alices-question", 1).count("<tr id=") == 1
            alice = _browser(url, tokens["alice"])
            assert _shown(alice, "", 1).count("<tr id=") == 1
            assert _shown(alice, "&q=admins-question", 0).count("<tr id=") == 0  # not hers
            assert _browser(url, tokens["bob"]).get("/ui/endpoints/llm?tab=logs").text.count("<tr id=") == 0
            assert _browser(url, tokens["mallory"]).get("/ui/endpoints/llm?tab=logs").status_code == 404
            found = re.search(r"/ui/endpoints/llm/logs/([0-9a-f]+)", _shown(admin, "&q=admins-question", 1))
            assert found is not None
            assert "admins-question" not in alice.get(f"/ui/endpoints/llm/logs/{found.group(1)}").text
            assert "admins-question" in admin.get(f"/ui/endpoints/llm/logs/{found.group(1)}").text
            if backend != "postgresql":
                return
            # a second host of the same database: the same principals, grants and inference table
            with _serve(tmp_path / "host-b", tmp_path) as other:
                _ask(other, tokens["alice"], "asked-on-host-b")
                page = _shown(admin, "&q=asked-on-host-b", 1)
                assert page.count("<tr id=") == 1
                assert _shown(alice, "", 2).count("<tr id=") == 2  # hers, from both hosts
                on_b = _browser(other, tokens["admin"])
                assert _shown(on_b, "", 3).count("<tr id=") == 3  # and host B's page shows host A's rows
