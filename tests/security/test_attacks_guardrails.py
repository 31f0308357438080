"""Bypassing a guardrail as a CAN_QUERY holder, against a real `aifuncs serve`: a blocked keyword written with
look-alike letters, zero-width or soft-hyphen characters, full-width forms or other spacing; a card number split
by runs of spaces, dashes, line breaks or zero-width characters; a blocked text in a model parameter (stop
sequences, extra_params) rather than in the messages. None of them may reach the upstream."""

from __future__ import annotations

import time
from typing import Any

import pytest

import aifuncs
from aifuncs.governance.guardrails import Guard, screen
from aifuncs.governance.pii import find_pii

from .conftest import Secured

INVOCATIONS = "/serving-endpoints/llm/invocations"
KEYWORD_VARIANTS = {
    "zero-width space": "about pro\u200bject falcon",
    "zero-width joiner": "about project\u200d falcon",
    "soft hyphen": "about proj\u00adect falcon",
    "cyrillic o": "about pr\u043eject falcon",
    "greek and cyrillic": "about \u0440r\u03bfject f\u0430lcon",
    "full-width": "about \uff50\uff52\uff4f\uff4a\uff45\uff43\uff54 falcon",
    "two spaces": "about project  falcon",
    "line break": "about project\nfalcon",
    "tab": "about project\tfalcon",
    "accented": "about pr\u00f6ject falc\u00f3n",
    "mathematical bold": "about \U0001d429\U0001d42b\U0001d428\U0001d423\U0001d41e\U0001d41c\U0001d42d falcon",
}
CARD_VARIANTS = {
    "two spaces": "pay 4111  1111  1111  1111 now",
    "spaced dashes": "pay 4111 - 1111 - 1111 - 1111 now",
    "zero-width": "pay 4111\u200b1111\u200b1111\u200b1111 now",
    "line breaks": "pay 4111\n1111\n1111\n1111 now",
    "en dashes": "pay 4111\u20131111\u20131111\u20131111 now",
    "tabs": "pay 4111\t1111\t1111\t1111 now",
}


def chat(text: str, **extra: Any) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": text}], **extra}


@pytest.fixture
def guarded(secured: Secured) -> Secured:
    aifuncs.endpoints.put_ai_gateway(
        "llm",
        {"guardrails": {"input": {"invalid_keywords": ["Project Falcon"], "pii": {"behavior": "BLOCK"}}}},
    )
    return secured


def wait_for_guard(secured: Secured) -> None:
    """The server binds the endpoint anew within a second of the change: until the plain keyword is refused."""
    deadline = time.monotonic() + 30
    while secured.call("alice", "POST", INVOCATIONS, json=chat("about project falcon")).status_code != 400:
        assert time.monotonic() < deadline
        time.sleep(0.1)


def test_disguised_keywords_and_cards_are_blocked(guarded: Secured) -> None:
    wait_for_guard(guarded)
    before = guarded.upstream.stats.requests
    passed = []
    for kind, variants in (("keyword", KEYWORD_VARIANTS), ("card", CARD_VARIANTS)):
        for name, text in variants.items():
            answer = guarded.call("alice", "POST", INVOCATIONS, json=chat(text))
            if answer.status_code != 400 or "guardrail" not in answer.json()["message"]:
                passed.append(f"{kind}: {name} ({answer.status_code})")
            else:  # the reason names the rule, never the text
                assert "4111" not in answer.text and text not in answer.text
    assert passed == []
    assert guarded.upstream.settled().requests == before  # not one of them was sent
    ordinary = guarded.call("alice", "POST", INVOCATIONS, json=chat("about project planning, card 4111 1112"))
    assert ordinary.status_code == 200, ordinary.text


def test_a_blocked_text_in_a_model_parameter_is_blocked(guarded: Secured) -> None:
    wait_for_guard(guarded)
    before = guarded.upstream.stats.requests
    for body in (
        chat("hello", stop=["project falcon"]),
        chat("hello", extra_params={"user": "project falcon"}),
        chat(
            "hello",
            extra_params={
                "tools": [
                    {"type": "function", "function": {"name": "f", "description": "card 4111 1111 1111 1111"}}
                ]
            },
        ),  # fmt: skip
    ):
        answer = guarded.call("alice", "POST", INVOCATIONS, json=body)
        assert answer.status_code == 400 and "model parameter" in answer.json()["message"], answer.text
    openai = guarded.call("alice", "POST", "/v1/chat/completions",
                          json={"model": "llm", **chat("hello", stop="project falcon")})  # fmt: skip
    assert openai.status_code == 400, openai.text
    assert guarded.upstream.settled().requests == before
    assert not guarded.upstream_saw("falcon") and not guarded.upstream_saw("4111 1111")


def test_the_guard_reads_texts_as_people_do() -> None:
    """The same normalisation without a server: what each variant is taken for, and what is left alone."""
    guard = Guard(pii="BLOCK", invalid_keywords=("Project Falcon",))
    found = screen(guard, [*KEYWORD_VARIANTS.values(), *CARD_VARIANTS.values()])
    assert all(found.blocked), [t for t, b in zip(found.texts, found.blocked, strict=True) if not b]
    fine = screen(
        guard,
        ["projects falcons", "project-falconry", "card 4111 1111", "\u041f\u0440\u0438\u0432\u0435\u0442"],
    )
    assert fine.blocked == [None, None, None, None]
    assert [f.kind for f in find_pii("4111 1111 1111 1111")] == ["card"]
