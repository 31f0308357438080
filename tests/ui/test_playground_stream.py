"""The playground's streamed answers (`/ui/playground/stream`): the upstream is asked to stream and its pieces
reach the page in order, then one `summary` event with latency, time to first token, tokens and cost; only a
signed-in session with its CSRF token and CAN_QUERY on the endpoint is answered; a guardrail's refusal is a
JSON error that says so, and an answer held for the output guardrail comes whole, screened."""

from __future__ import annotations

import json
import sqlite3
import time
from typing import Any

import httpx
from starlette.testclient import TestClient

import aifuncs

from .conftest import BASE, Ui

PROMPT = "tell me about streams"


def _post(client: TestClient, csrf: str | None, body: dict[str, Any], **headers: str) -> httpx.Response:
    sent = {"accept": "text/event-stream", **({"x-csrf-token": csrf} if csrf else {}), **headers}
    return client.post("/ui/playground/stream", json=body, headers=sent)


def _events(text: str) -> list[tuple[str, str]]:
    """The SSE events of a body: (event name or "message", data)."""
    found = []
    for block in text.split("\n\n"):
        if not block.strip():
            continue
        name, data = "message", []
        for line in block.splitlines():
            if line.startswith("event: "):
                name = line[len("event: ") :]
            elif line.startswith("data: "):
                data.append(line[len("data: ") :])
        found.append((name, "\n".join(data)))
    return found


def _body(prompt: str = PROMPT) -> dict[str, Any]:
    return {"endpoint": "llm", "prompt": prompt, "system": "be brief", "temperature": "0.2"}


def test_pieces_arrive_in_order_then_the_figures(ui: Ui) -> None:
    alice = ui.client("alice")
    answer = _post(alice, ui.csrf(alice), _body())
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("text/event-stream")
    events = _events(answer.text)
    assert events[-1] == ("message", "[DONE]")
    name, summary_data = events[-2]
    assert name == "summary"
    chunks = [json.loads(data) for name, data in events[:-2]]
    pieces = [c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"]]
    assert len([p for p in pieces if p]) == 8  # the fake model's 8 pieces, each its own chunk
    assert "".join(pieces) == f"echo: {PROMPT}"  # in order
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    summary = json.loads(summary_data)
    used = [c["usage"] for c in chunks if c.get("usage")]
    assert used and summary["input_tokens"] == used[-1]["prompt_tokens"] > 0
    assert summary["output_tokens"] == used[-1]["completion_tokens"] > 0
    expected = (summary["input_tokens"] * 1.0 + summary["output_tokens"] * 2.0) / 1e6
    assert abs(summary["cost_usd"] - expected) < 1e-12
    assert 0 < summary["ttft_ms"] <= summary["latency_ms"]
    sent = ui.upstream.stats.bodies
    assert len(sent) == 1 and sent[0]["stream"] is True  # the runtime's streamed path, not a whole answer
    assert sent[0]["temperature"] == 0.2
    assert sent[0]["messages"][0] == {"role": "system", "content": "be brief"}
    row = _usage_row(ui)
    assert row["requester"] == "alice" and row["status"] == "ok" and row["ttft_ms"] > 0


def _usage_row(ui: Ui, timeout_s: float = 30.0) -> sqlite3.Row:
    """The request's usage row, once the server has written it (behind the request path)."""
    deadline = time.monotonic() + timeout_s
    while True:
        path = ui.home / "usage.db"
        if path.exists():
            with sqlite3.connect(path) as db:
                db.row_factory = sqlite3.Row
                try:
                    found = db.execute("SELECT * FROM usage WHERE status != 'interrupted'").fetchall()
                except sqlite3.OperationalError:
                    found = []
            if found:
                return found[-1]
        assert time.monotonic() < deadline, "no usage row was written"
        time.sleep(0.05)


def test_only_a_signed_in_session_with_its_csrf_token_and_can_query_is_answered(ui: Ui) -> None:
    signed_out = ui.client()
    refused = _post(signed_out, "0" * 64, _body(), accept="application/json")
    assert refused.status_code == 401 and "sign in again" in refused.text

    alice = ui.client("alice")
    token = ui.csrf(alice)
    assert _post(alice, None, _body()).status_code == 403  # no CSRF token
    assert _post(alice, "f" * len(token), _body()).status_code == 403  # another one
    other_site = _post(alice, token, _body(), origin="https://elsewhere.example")
    assert other_site.status_code == 403  # the session's token, from another site's page

    bob = ui.client("bob")  # CAN_VIEW: sees the endpoint, may not query it
    viewer = _post(bob, ui.csrf(bob), _body())
    assert viewer.status_code == 403, viewer.text
    assert "CAN_QUERY" in viewer.json()["message"]
    mallory = ui.client("mallory")  # no grant: as if it did not exist
    assert _post(mallory, ui.csrf(mallory), _body()).status_code == 404
    assert ui.upstream.stats.requests == 0  # nothing was sent for any of them

    mine = _post(alice, token, _body(), origin=BASE)
    assert mine.status_code == 200, mine.text  # her own page's request


def test_bad_input_and_a_guardrails_refusal_read_as_such(ui: Ui) -> None:
    alice = ui.client("alice")
    token = ui.csrf(alice)
    empty = _post(alice, token, {"endpoint": "llm", "prompt": "  "})
    assert empty.status_code == 400 and empty.json()["message"] == "Write a prompt first."
    bad = _post(alice, token, {**_body(), "max_tokens": "lots"})
    assert bad.status_code == 400 and "max_tokens is a number" in bad.json()["message"]
    aifuncs.endpoints.put_ai_gateway(
        "llm",
        {
            "guardrails": {
                "input": {"invalid_keywords": ["Project Falcon"]},
                "output": {"pii": {"behavior": "MASK"}},
            }
        },
    )
    blocked = _post(alice, token, _body("what is Project Falcon?"))
    assert blocked.status_code == 400 and "input guardrail" in blocked.json()["message"]
    assert not any("Falcon" in json.dumps(b) for b in ui.upstream.stats.bodies)  # never sent

    held = _post(alice, token, _body("write to jane.doe@example.com"))  # held until screened whole
    assert held.status_code == 200, held.text
    chunks = [json.loads(d) for n, d in _events(held.text) if n == "message" and d.startswith("{")]
    texts = [c["choices"][0]["delta"]["content"] for c in chunks if c["choices"] and c["choices"][0]["delta"]]
    assert len(texts) == 1 and texts[0].startswith("echo: write to ") and "jane.doe" not in texts[0]
