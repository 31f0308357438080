"""Statuses a client can act on: a real `aifuncs serve`, upstreams that fail on purpose, and the real clients.

An upstream that still fails after aifuncs' own retries is a passing failure (503, or 429 when it said so, with
a whole-second Retry-After): every client retries it and gets the answer once the upstream recovers. Only a
model that rejects its input is a 400 that no client retries; an upstream that refuses the server's own key is
a 502 without a retry hint.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from security.conftest import Secured
from servers import FakeServer, Faults, free_port

import aifuncs
from aifuncs.errors import ModelError, RemoteError
from aifuncs.server._errors import from_aifuncs, from_unexpected

CHAT = {"messages": [{"role": "user", "content": "hello"}]}
FAST_RETRY = {"max_retries": 1, "retry_base_s": 0.01}  # aifuncs' own retries: two sends per client request


def endpoint(name: str, base_url: str, **options: Any) -> None:
    """An openai endpoint alice may query."""
    aifuncs.endpoints.create(name, kind="openai", model="m", base_url=base_url, **options)
    aifuncs.endpoints.update_permissions(name, [{"user_name": "alice", "permission_level": "CAN_QUERY"}])


@pytest.fixture
def failing(secured: Secured) -> Iterator[dict[str, FakeServer]]:
    """Upstreams that fail every request in one way each, behind endpoints of the same names."""
    kinds = {
        "err500": (Faults(server_error=1.0), FAST_RETRY),
        "bad-gateway": (Faults(bad_gateway=1.0), FAST_RETRY),
        "slow": (Faults(slow=1.0, slow_s=5.0), {"max_retries": 0, "timeout_s": 0.3}),
        "said-429": (Faults(rate_limit=1.0, retry_after="3"), {"max_retries": 0}),
        "rejects": (Faults(fail_first=10**6, fail_status=400), FAST_RETRY),
        "bad-key": (Faults(fail_first=10**6, fail_status=401), FAST_RETRY),
    }
    servers: dict[str, FakeServer] = {}
    try:
        for name, (faults, options) in kinds.items():
            servers[name] = FakeServer(faults=faults).__enter__()
            endpoint(name, servers[name].url + "/v1", **options)
        endpoint("gone", f"http://127.0.0.1:{free_port()}/v1", **FAST_RETRY)  # nothing listens there
        yield servers
    finally:
        for server in servers.values():
            server.__exit__(None, None, None)


def test_each_failure_has_the_status_a_client_acts_on(
    secured: Secured, failing: dict[str, FakeServer]
) -> None:
    def ask(name: str) -> httpx.Response:
        return secured.call("alice", "POST", f"/serving-endpoints/{name}/invocations", json=CHAT)

    for name in ("err500", "bad-gateway", "slow", "gone"):  # passing failures, after aifuncs' own retries
        answer = ask(name)
        assert answer.status_code == 503, (name, answer.text)
        assert answer.json()["error_code"] == "TEMPORARILY_UNAVAILABLE", name
        assert answer.headers["retry-after"] == "1" and answer.headers["x-should-retry"] == "true", name
    assert failing["err500"].stats.requests == 2  # sent, retried once, then handed to the client to retry
    limited = ask("said-429")
    assert limited.status_code == 429 and limited.json()["error_code"] == "REQUEST_LIMIT_EXCEEDED"
    assert limited.headers["retry-after"] == "3"  # the upstream's own wait, passed on
    rejected = ask("rejects")  # the model read the input and refused it: the caller's to fix
    assert rejected.status_code == 400 and rejected.headers["x-should-retry"] == "false"
    assert failing["rejects"].stats.requests == 1  # not retried by aifuncs either
    refused = ask("bad-key")  # the upstream refuses the server itself: an operator's to fix
    assert refused.status_code == 502 and refused.headers["x-should-retry"] == "false"
    assert "retry-after" not in refused.headers
    for answer in (limited, rejected, refused):  # every client's error shape, whatever the status
        body = answer.json()
        assert body["message"] and body["error"]["message"] == body["message"]


@pytest.fixture
def recovering(secured: Secured) -> Iterator[dict[str, FakeServer]]:
    """One upstream per client that fails its first 2 requests (500; 429 for one), then answers: aifuncs'
    own two sends fail, the client's retry succeeds."""
    servers: dict[str, FakeServer] = {}
    try:
        for name, status in (
            ("for-openai", 500),
            ("for-mlflow", 500),
            ("for-sdk", 500),
            ("for-sdk-429", 429),
        ):
            faults = Faults(fail_first=2, fail_status=status, retry_after="1")
            servers[name] = FakeServer(faults=faults).__enter__()
            endpoint(name, servers[name].url + "/v1", **FAST_RETRY)
        yield servers
    finally:
        for server in servers.values():
            server.__exit__(None, None, None)


def test_the_real_clients_retry_a_passing_failure_and_get_the_answer(
    secured: Secured, recovering: dict[str, FakeServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    from databricks.sdk import WorkspaceClient
    from databricks.sdk.service.serving import ChatMessage, ChatMessageRole
    from mlflow.deployments import get_deploy_client
    from openai import OpenAI

    token = secured.tokens["alice"]
    openai = OpenAI(base_url=secured.url + "/serving-endpoints", api_key=token, max_retries=2, timeout=60)
    reply = openai.chat.completions.create(model="for-openai", messages=[{"role": "user", "content": "hi"}])
    assert reply.choices[0].message.content == "echo: hi"

    monkeypatch.setenv("DATABRICKS_HOST", secured.url)
    monkeypatch.setenv("DATABRICKS_TOKEN", token)
    monkeypatch.setenv("MLFLOW_DATABRICKS_ENDPOINT_HTTP_RETRY_TIMEOUT", "60")
    answer = get_deploy_client("databricks").predict(endpoint="for-mlflow", inputs=CHAT)
    assert answer["choices"][0]["message"]["content"] == "echo: hello"

    workspace = WorkspaceClient(host=secured.url, token=token)
    for name in ("for-sdk", "for-sdk-429"):
        queried = workspace.serving_endpoints.query(
            name=name, messages=[ChatMessage(role=ChatMessageRole.USER, content="hey")]
        )
        assert queried.choices is not None and queried.choices[0].message.content == "echo: hey"
    # Each upstream saw aifuncs' two failed sends for the client's first try, then the retry that succeeded.
    assert {name: server.stats.requests for name, server in recovering.items()} == dict.fromkeys(
        recovering, 3
    )


def test_a_store_that_fails_is_a_503_and_a_model_error_stays_a_400() -> None:
    locked = sqlite3.OperationalError("database is locked")
    passing = from_unexpected(locked)
    assert passing is not None and passing.status == 503 and passing.headers["Retry-After"] == "1"
    assert "locked" not in passing.message  # what the store said stays in the server's log
    try:
        try:
            raise locked
        except sqlite3.OperationalError as error:
            raise ModelError("llm", 3, "database is locked") from error
    except ModelError as wrapped:
        assert from_aifuncs(wrapped).status == 503  # a store failing under the runtime: not the caller's 400
    assert from_unexpected(ValueError("a bug")) is None  # a bug of ours stays a logged 500
    plain = ModelError("llm", 1, "ValueError: the model cannot read 'x'")  # a Python model's own failure
    assert from_aifuncs(plain).status == 400 and from_aifuncs(plain).headers["x-should-retry"] == "false"
    upstream = RemoteError("HTTP 503", status=503, retryable=True, retry_after=2.2)
    try:
        raise ModelError("llm", 1, str(upstream)) from upstream
    except ModelError as wrapped:
        mapped = from_aifuncs(wrapped)
    assert mapped.status == 503 and mapped.headers["Retry-After"] == "3"  # whole seconds, never shorter
