"""Chat, completions and embeddings bodies, answered in OpenAI's shapes with `usage`.

They arrive at `/serving-endpoints/{name}/invocations` (Databricks) or at the OpenAI-compatible routes
(`/serving-endpoints/chat/completions`, `/v1/chat/completions`... with `model` naming the endpoint). Each goes
through the same binding and runtime as a query: one row per conversation, prompt or input text.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pyarrow as pa
from starlette.responses import Response, StreamingResponse
from starlette.types import Send

from aifuncs.errors import AifuncsError
from aifuncs.providers.base import Prediction
from aifuncs.runtime import CallSpec, Runtime, TokenTally, answering_now
from aifuncs.runtime._stream import stream_answer, streams
from aifuncs.server._errors import ApiError, from_aifuncs
from aifuncs.server._invoke import Bindings, Prepared, request_context
from aifuncs.session import Session

__all__ = ["chat", "completions", "embeddings", "kind_of", "sse", "streamed"]

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
    bindings: Bindings, name: str, rows: pa.Array, body: dict[str, Any], session: Session, text: bool
) -> tuple[CallSpec, TokenTally]:
    tally = TokenTally()
    labelled = session.derive(context=request_context(body))
    call = bindings.bound(labelled, name, rows.type, _parameters(body) or None, (tally,))
    provider = session.runtime.provider(call.endpoint)
    if text and not provider.returns_text:
        raise _bad(f"Endpoint {name!r} is a {call.endpoint.kind} model, not a chat or completions one.")
    if not text and not call.result_type.endswith("[]"):
        raise _bad(f"Endpoint {name!r} is not an embedding model (it answers {call.result_type}).")
    return call, tally


def _usage(tally: TokenTally) -> dict[str, int]:
    return {"prompt_tokens": tally.input_tokens, "completion_tokens": tally.output_tokens,
            "total_tokens": tally.input_tokens + tally.output_tokens}  # fmt: skip


def chat(bindings: Bindings, name: str, body: dict[str, Any], session: Session) -> Prepared:
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
    call, tally = _call(bindings, name, rows, body, session, text=True)

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


def completions(bindings: Bindings, name: str, body: dict[str, Any], session: Session) -> Prepared:
    prompt = body.get("prompt")
    prompts = [prompt] if isinstance(prompt, str) else prompt
    if not isinstance(prompts, list) or not prompts or not all(isinstance(p, str) for p in prompts):
        raise _bad("prompt is a text or a list of texts.")
    rows = pa.array(prompts, pa.string())
    call, tally = _call(bindings, name, rows, body, session, text=True)

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


def embeddings(bindings: Bindings, name: str, body: dict[str, Any], session: Session) -> Prepared:
    given = body.get("input")
    texts = [given] if isinstance(given, str) else given
    if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
        raise _bad("input is a text or a list of texts.")
    rows = pa.array(texts, pa.string())
    call, tally = _call(bindings, name, rows, body, session, text=False)

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
    (mlflow refuses any other line). For endpoints that cannot stream (`streamed` answers the others): the
    answer comes as one chunk once the model has finished."""
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


class _Events(StreamingResponse):
    """Server-sent events whose source is closed as soon as they stop going out (a client that went away
    stops the upstream request at once, not when the generator is collected)."""

    async def stream_response(self, send: Send) -> None:
        try:
            await super().stream_response(send)
        finally:
            await self.body_iterator.aclose()  # type: ignore[attr-defined]


async def streamed(
    runtime: Runtime,
    prepared: Prepared,
    name: str,
    body: dict[str, Any],
    headers: dict[str, str],
    *,
    databricks: bool,
) -> Response | None:
    """A chat or completions answer streamed as the model writes it, in OpenAI's chunk shape (Databricks' is
    the same; on `/invocations` the last chunk carries `usage`, on OpenAI's routes a chunk of its own does,
    when `stream_options.include_usage` asks). None when the endpoint cannot stream (answered whole).

    The first piece is awaited before the response starts: an error until then (a guardrail, a rate limit,
    the model failing) is an ordinary error response; after it, an `error` event ends the stream."""
    call, rows, _ = prepared
    if len(rows) != 1 or not streams(runtime, call):
        return None
    pieces = stream_answer(runtime, call, rows)
    try:
        first = await anext(pieces)
    except BaseException:
        await pieces.aclose()
        raise
    options = body.get("stream_options")
    usage_chunk = not databricks and isinstance(options, dict) and bool(options.get("include_usage"))
    chat_shaped = "messages" in body
    head = {"id": f"{'chatcmpl' if chat_shaped else 'cmpl'}-{uuid.uuid4().hex[:24]}",
            "object": "chat.completion.chunk" if chat_shaped else "text_completion",
            "created": int(time.time()), "model": name}  # fmt: skip

    def choice(text: str | None, first_piece: bool = False, finish: str | None = None) -> dict[str, Any]:
        if not chat_shaped:
            return {"index": 0, "text": text or "", "finish_reason": finish}
        delta: dict[str, Any] = {} if text is None else {"content": text}
        if first_piece:
            delta = {"role": "assistant", **delta}
        return {"index": 0, "delta": delta, "finish_reason": finish}

    async def events() -> AsyncIterator[bytes]:
        piece: str | Prediction = first
        sent_any = False
        try:
            while not isinstance(piece, Prediction):
                yield _event({**head, "choices": [choice(piece, not sent_any)]})
                sent_any = True
                piece = await anext(pieces)
            usage = {"prompt_tokens": piece.input_tokens or 0, "completion_tokens": piece.output_tokens or 0,
                     "total_tokens": (piece.input_tokens or 0) + (piece.output_tokens or 0)}  # fmt: skip
            last = {**head, "choices": [choice(None, not sent_any, "stop")]}
            yield _event({**last, "usage": usage} if databricks else last)
            if usage_chunk:
                yield _event({**head, "choices": [], "usage": usage})
            yield b"data: [DONE]\n\n"
        except AifuncsError as error:  # after the first piece: the stream ends with the error, as OpenAI does
            api = from_aifuncs(error)
            kind = "invalid_request_error" if api.status < 500 else "server_error"
            yield _event({"error_code": api.code, "message": api.message,
                          "error": {"message": api.message, "type": kind, "code": api.code}})  # fmt: skip
        finally:
            await pieces.aclose()

    headers["served-model-name"] = answering_now() or headers.get("served-model-name", name)
    return _Events(events(), media_type="text/event-stream", headers=headers)


def _event(chunk: dict[str, Any]) -> bytes:
    return f"data: {json.dumps(chunk, separators=(',', ':'))}\n\n".encode()
