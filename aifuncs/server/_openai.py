"""Chat, completions and embeddings bodies, answered in OpenAI's shapes with `usage`.

They arrive at `/serving-endpoints/{name}/invocations` (Databricks) or at the OpenAI-compatible routes
(`/serving-endpoints/chat/completions`, `/v1/chat/completions`... with `model` naming the endpoint). Each goes
through the same binding and runtime as a query: one row per conversation, prompt or input text.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import pyarrow as pa

from aifuncs.governance import Principal
from aifuncs.runtime import CallSpec, TokenTally, default_runtime
from aifuncs.server._errors import ApiError
from aifuncs.server._invoke import Prepared, bound, request_context

__all__ = ["chat", "completions", "embeddings", "kind_of", "sse"]

_PARAMETERS = ("max_tokens", "temperature", "top_p", "stop", "seed", "presence_penalty", "frequency_penalty")


def _bad(message: str) -> ApiError:
    return ApiError(400, "INVALID_PARAMETER_VALUE", message)


def kind_of(body: dict[str, Any]) -> str | None:
    """Which OpenAI body this is, if any."""
    if "messages" in body:
        return "chat"
    if "prompt" in body:
        return "completions"
    if "input" in body and "inputs" not in body:
        return "embeddings"
    return None


def _parameters(body: dict[str, Any]) -> dict[str, Any]:
    if body.get("n", 1) != 1:
        raise _bad("n: this server answers one choice per request.")
    extra = body.get("extra_params") or {}
    if not isinstance(extra, dict):
        raise _bad("extra_params is an object of model parameters.")
    return {**{k: body[k] for k in _PARAMETERS if body.get(k) is not None}, **extra}


def _call(
    name: str, rows: pa.Array, body: dict[str, Any], principal: Principal, text: bool
) -> tuple[CallSpec, TokenTally]:
    tally = TokenTally()
    call = bound(name, rows.type, _parameters(body) or None, principal, request_context(body), (tally,))
    provider = default_runtime().provider(call.endpoint)
    if text and not provider.returns_text:
        raise _bad(f"Endpoint {name!r} is a {call.endpoint.kind} model, not a chat or completions one.")
    if not text and not call.result_type.endswith("[]"):
        raise _bad(f"Endpoint {name!r} is not an embedding model (it answers {call.result_type}).")
    return call, tally


def _usage(tally: TokenTally) -> dict[str, int]:
    return {"prompt_tokens": tally.input_tokens, "completion_tokens": tally.output_tokens,
            "total_tokens": tally.input_tokens + tally.output_tokens}  # fmt: skip


def chat(name: str, body: dict[str, Any], principal: Principal) -> Prepared:
    messages = body.get("messages")
    if (
        not isinstance(messages, list)
        or not messages
        or not all(
            isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
            for m in messages
        )
    ):
        raise _bad('messages is a list of {"role": "...", "content": "..."}.')
    rows = pa.array([{"messages": [{"role": m["role"], "content": m["content"]} for m in messages]}])
    call, tally = _call(name, rows, body, principal, text=True)

    def word(answers: pa.Array) -> dict[str, Any]:
        message = {"role": "assistant", "content": answers[0].as_py()}
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": name,
            "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
            "usage": _usage(tally),
        }

    return call, rows, word


def completions(name: str, body: dict[str, Any], principal: Principal) -> Prepared:
    prompt = body.get("prompt")
    prompts = [prompt] if isinstance(prompt, str) else prompt
    if not isinstance(prompts, list) or not prompts or not all(isinstance(p, str) for p in prompts):
        raise _bad("prompt is a text or a list of texts.")
    rows = pa.array(prompts, pa.string())
    call, tally = _call(name, rows, body, principal, text=True)

    def word(answers: pa.Array) -> dict[str, Any]:
        return {
            "id": f"cmpl-{uuid.uuid4().hex[:24]}",
            "object": "text_completion",
            "created": int(time.time()),
            "model": name,
            "choices": [
                {"index": i, "text": a, "finish_reason": "stop"} for i, a in enumerate(answers.to_pylist())
            ],
            "usage": _usage(tally),
        }

    return call, rows, word


def embeddings(name: str, body: dict[str, Any], principal: Principal) -> Prepared:
    given = body.get("input")
    texts = [given] if isinstance(given, str) else given
    if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
        raise _bad("input is a text or a list of texts.")
    rows = pa.array(texts, pa.string())
    call, tally = _call(name, rows, body, principal, text=False)

    def word(answers: pa.Array) -> dict[str, Any]:
        return {
            "object": "list",
            "data": [
                {"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(answers.to_pylist())
            ],
            "model": name,
            "usage": {"prompt_tokens": tally.input_tokens, "total_tokens": tally.input_tokens},
        }

    return call, rows, word


def sse(answer: dict[str, Any]) -> list[bytes]:
    """A finished chat or completions answer as server-sent events: `data:` lines only, then `data: [DONE]`
    (mlflow refuses any other line). The answer comes as one chunk once the model has finished."""
    chunks = []
    for choice in answer["choices"]:
        if answer["object"] == "chat.completion":
            first = {"index": choice["index"], "delta": choice["message"], "finish_reason": None}
            last = {"index": choice["index"], "delta": {}, "finish_reason": choice["finish_reason"]}
            kind = "chat.completion.chunk"
        else:
            first = {"index": choice["index"], "text": choice["text"], "finish_reason": None}
            last = {"index": choice["index"], "text": "", "finish_reason": choice["finish_reason"]}
            kind = "text_completion"
        head = {"id": answer["id"], "object": kind, "created": answer["created"], "model": answer["model"]}
        chunks += [{**head, "choices": [first]}, {**head, "choices": [last], "usage": answer["usage"]}]
    return [f"data: {json.dumps(c, separators=(',', ':'))}\n\n".encode() for c in chunks] + [
        b"data: [DONE]\n\n"
    ]
