"""Starving the server as a token holder: a request's declared reply budget (`max_tokens`, huge, negative or a
300-digit number) must not take an endpoint's shared token limit from everyone else (against a real server)."""

from __future__ import annotations

import time

import httpx
import pytest
from servers import FakeServer

import aifuncs

from .conftest import Secured

INVOCATIONS = "/serving-endpoints/llm/invocations"


def chat(**extra: object) -> dict[str, object]:
    return {"messages": [{"role": "user", "content": "hi"}], **extra}


def admitted(secured: Secured, who: str, body: dict[str, object], timeout_s: float) -> httpx.Response:
    """The first answer that is not a 429, waiting as Retry-After says (bounded by `timeout_s`)."""
    deadline = time.monotonic() + timeout_s
    while True:
        answer = secured.call(who, "POST", INVOCATIONS, json=body)
        if answer.status_code != 429:
            return answer
        wait = float(answer.headers.get("retry-after", "1"))
        assert time.monotonic() + min(wait, 1.0) < deadline, (
            f"{who} still refused after {timeout_s} s: {answer.text} (Retry-After {wait} s)"
        )
        time.sleep(min(wait, 0.2))


@pytest.mark.parametrize("max_tokens", [10**12, -(10**12), int("9" * 300)])
def test_a_declared_reply_budget_cannot_take_an_endpoint_limit(secured: Secured, max_tokens: int) -> None:
    # 6,000 tokens a minute for the whole endpoint: a normal request reserves ~257 of them
    aifuncs.endpoints.set_rate_limits(
        "llm", [{"tokens": 6000, "key": "endpoint", "renewal_period": "minute"}]
    )
    warm = admitted(secured, "alice", chat(), timeout_s=30)  # the server has bound the limit
    assert warm.status_code == 200, warm.text
    attack = admitted(secured, "alice", chat(max_tokens=max_tokens), timeout_s=30)
    assert attack.status_code in (200, 400), attack.text
    # the admin (any other principal) still gets in within seconds, not after the attacker's budget drains
    after = admitted(secured, "admin", chat(max_tokens=10), timeout_s=20)
    assert after.status_code == 200, after.text


def test_a_topic_check_costs_no_embedding_once_the_limit_refuses(secured: Secured) -> None:
    """valid_topics embeds each request's text on the topic endpoint: a principal over the guarded endpoint's
    limit must not make the server pay for embeddings its requests will never use."""
    with FakeServer() as embeddings:
        aifuncs.endpoints.create(
            "emb", kind="openai", model="e", task="embeddings", base_url=embeddings.url + "/v1"
        )
        aifuncs.endpoints.put_ai_gateway(
            "llm",
            {
                "rate_limits": [{"calls": 1, "key": "user", "renewal_period": "minute"}],
                "guardrails": {
                    "input": {"valid_topics": ["billing"], "topic_endpoint": "emb", "topic_threshold": -1}
                },
            },
        )
        deadline = time.monotonic() + 30  # the server binds the gateway anew within a second
        while (first := secured.call("alice", "POST", INVOCATIONS, json=chat())).status_code != 200:
            assert time.monotonic() < deadline, first.text
            time.sleep(0.1)
        spent = embeddings.settled().requests
        asked = [{"messages": [{"role": "user", "content": f"billing question {i}"}]} for i in range(20)]
        refused = [secured.call("alice", "POST", INVOCATIONS, json=body) for body in asked]  # none reused
        assert [r.status_code for r in refused] == [429] * 20
        assert all(float(r.headers["retry-after"]) > 1 for r in refused)
        assert embeddings.settled().requests == spent  # 0 embeddings for 20 refused requests
        assert secured.call("admin", "POST", INVOCATIONS, json=chat()).status_code == 200  # others unaffected
