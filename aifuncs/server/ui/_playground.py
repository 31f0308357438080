"""The playground: one prompt to 2-3 endpoints side by side. `/ui/playground/stream` answers one endpoint as
server-sent events through the runtime's streamed path (`_openai.streamed`, the chat route's own: guardrails,
rate limits, accounting, a client that goes away stops the upstream), as the signed-in principal; kinds that
cannot stream send their whole answer as one chunk. After the answer, one `summary` event gives the figures a
column shows: latency and time to first token (the server's), tokens and cost. `/ui/playground/ask` answers
the same body whole, as JSON.

    POST /ui/playground/stream  {"endpoint": "llm", "prompt": "...", "system": "...", "temperature": 0.2}
    data: {"object": "chat.completion.chunk", "choices": [{"delta": {"role": "assistant", "content": "Hel"}}]}
    ...
    event: summary
    data: {"latency_ms": 812.4, "ttft_ms": 95.1, "input_tokens": 12, "output_tokens": 30, "cost_usd": 7.2e-05}
    data: [DONE]
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterable, AsyncIterator
from types import SimpleNamespace
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from aifuncs.errors import AifuncsError
from aifuncs.runtime._budget import price
from aifuncs.server._errors import ApiError, from_aifuncs
from aifuncs.server._input import parse_json
from aifuncs.server._openai import chat, sse, streamed
from aifuncs.server.ui._web import Me, Ui

__all__ = ["ROUTES"]

_MAX_COMPARE = 3
_DONE = b"data: [DONE]\n\n"
_HEADERS = {"x-accel-buffering": "no"}  # a proxy in front passes each chunk on at once


def playground(ui: Ui, request: Request, me: Me) -> tuple[str, dict[str, Any]]:
    names = me.catalog.names()
    chosen = [n for n in request.query_params.getlist("e") if n in names][:_MAX_COMPARE]
    if not chosen:
        chosen = names[:2]
    return "playground.html", {"names": names, "chosen": chosen, "slots": max(2, len(chosen))}


def _chat_body(body: Any) -> tuple[str, dict[str, Any]]:
    """The endpoint and the chat body the playground's form asks for, or a clear 400."""
    if not isinstance(body, dict) or not isinstance(body.get("endpoint"), str):
        raise ApiError(400, "INVALID_PARAMETER_VALUE", "Name the endpoint to ask.")
    prompt = str(body.get("prompt") or "")
    if not prompt.strip():
        raise ApiError(400, "INVALID_PARAMETER_VALUE", "Write a prompt first.")
    messages = ([{"role": "system", "content": str(body["system"])}] if body.get("system") else []) + [
        {"role": "user", "content": prompt}
    ]
    request_body: dict[str, Any] = {"messages": messages}
    for key, kind in (("temperature", float), ("max_tokens", int)):
        value = body.get(key)
        if value not in (None, ""):
            try:
                request_body[key] = kind(value)
            except (TypeError, ValueError):
                raise ApiError(400, "INVALID_PARAMETER_VALUE", f"{key} is a number, not {value!r}.") from None
    return body["endpoint"], request_body


def _figures(options: dict[str, Any], used: dict[str, Any]) -> dict[str, Any]:
    inp, out = used.get("prompt_tokens"), used.get("completion_tokens")
    return {
        "input_tokens": inp,
        "output_tokens": out,
        "cost_usd": price(SimpleNamespace(**options), 1, inp, out),
    }


async def ask(ui: Ui, request: Request, me: Me) -> Response:
    """One endpoint's whole answer to the playground's prompt: text, latency, tokens and cost (JSON)."""
    name, request_body = _chat_body(parse_json(await request.body()))
    started = time.perf_counter()
    call, rows, word = await run_in_threadpool(chat, ui.bindings, name, request_body, me.session)
    answer = word(await me.session.runtime.answer_call(call, rows))
    latency_ms = (time.perf_counter() - started) * 1000
    text = ((answer.get("choices") or [{}])[0].get("message") or {}).get("content")
    figures = _figures(call.endpoint.options, answer.get("usage") or {})
    return JSONResponse(
        {"endpoint": call.endpoint.name, "text": text, "latency_ms": round(latency_ms, 1), **figures}
    )


async def stream(ui: Ui, request: Request, me: Me) -> Response:
    """One endpoint's answer as it is written (server-sent events), then its figures. An error before the
    first piece (a guardrail's refusal, a rate limit, no CAN_QUERY) is a JSON error with its status; after
    it, an `error` event ends the stream, as on the chat route."""
    try:
        name, request_body = _chat_body(parse_json(await request.body()))
        started = time.perf_counter()
        prepared = await run_in_threadpool(chat, ui.bindings, name, request_body, me.session)
        body = {**request_body, "stream": True, "stream_options": {"include_usage": True}}
        events = await streamed(me.session.runtime, prepared, name, body, dict(_HEADERS), databricks=False)
    except ApiError as error:
        return _error(error)
    except AifuncsError as error:
        return _error(from_aifuncs(error))
    call, rows, word = prepared
    if isinstance(events, StreamingResponse):
        first = time.perf_counter()  # `streamed` returns once the first piece has come
        events.body_iterator = _summed(events.body_iterator, call.endpoint.options, started, first)
        return events
    try:  # a kind that cannot stream: its whole answer, one chunk
        answer = word(await me.session.runtime.answer_call(call, rows))
    except AifuncsError as error:
        return _error(from_aifuncs(error))
    whole = _summed(_one_by_one(sse(answer)), call.endpoint.options, started, time.perf_counter())
    return StreamingResponse(whole, media_type="text/event-stream", headers=_HEADERS)


def _error(error: ApiError) -> JSONResponse:
    return JSONResponse({"error_code": error.code, "message": error.message}, status_code=error.status)


async def _one_by_one(chunks: list[bytes]) -> AsyncIterator[bytes]:
    for chunk in chunks:
        yield chunk


async def _summed(
    events: AsyncIterable[Any], options: dict[str, Any], started: float, first: float
) -> AsyncIterator[bytes]:
    """The chunks as they are, and before `[DONE]` the `summary` event. Closing it closes the chunks' source
    (the response closes it when the client goes away: the upstream request stops)."""
    used: dict[str, Any] = {}
    try:
        async for raw in events:
            chunk = raw if isinstance(raw, bytes) else str(raw).encode()
            if chunk == _DONE:
                summary = {
                    "latency_ms": round((time.perf_counter() - started) * 1000, 1),
                    "ttft_ms": round((first - started) * 1000, 1),
                    **_figures(options, used),
                }
                yield f"event: summary\ndata: {json.dumps(summary)}\n\n".encode()
            elif chunk.startswith(b"data: {"):
                found = json.loads(chunk[len(b"data: ") :])
                if isinstance(found.get("usage"), dict):
                    used = found["usage"]
            yield chunk
    finally:
        close = getattr(events, "aclose", None)
        if close is not None:
            await close()


ROUTES: list[tuple[str, Any, list[str]]] = [
    ("/playground", playground, ["GET"]),
    ("/playground/ask", ask, ["POST"]),
    ("/playground/stream", stream, ["POST"]),
]
