"""Starving the server as a token holder: a request's declared reply budget (`max_tokens`, huge, negative or a
300-digit number) must not take an endpoint's shared token limit from everyone else (against a real server)."""

from __future__ import annotations

import time

import httpx
import pytest

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
