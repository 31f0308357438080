"""`anthropic` endpoints: Anthropic's Messages API, one prompt per request."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any, ClassVar

import pyarrow as pa
from pydantic import Field

from aifuncs.errors import RemoteError
from aifuncs.providers._chat import (
    Message,
    Piece,
    conversations,
    generation_parameters,
    greedy,
    wanted_schema,
)
from aifuncs.providers._http import HttpOptions, HttpProvider, join_url
from aifuncs.providers._sse import post_events
from aifuncs.providers.base import CallOptions, Prediction

API_VERSION = "2023-06-01"


class AnthropicOptions(HttpOptions):
    model: str = Field(description="e.g. claude-sonnet-4")
    base_url: str = Field(default="https://api.anthropic.com", description="Without /v1.")
    system_prompt: str | None = Field(default=None)
    max_tokens: int = Field(
        default=1024, ge=1, description="Messages API requires one; modelParameters wins."
    )


class AnthropicProvider(HttpProvider):
    kind = "anthropic"
    Options = AnthropicOptions
    options: AnthropicOptions
    returns_text = True
    streams: ClassVar[bool] = True

    @property
    def batch_rows(self) -> int:
        return 1

    def deterministic(self, options: CallOptions) -> bool:
        return greedy(options)

    def output_type(self) -> str | None:
        return self.options.returns or "VARCHAR"

    def auth_headers(self, key: str) -> dict[str, str]:
        return {"x-api-key": key}

    async def predict(self, requests: pa.Array, options: CallOptions) -> Any:
        chats = conversations(requests)
        answers = await asyncio.gather(*(self._message(chat, options) for chat in chats))
        return Prediction(
            [a.outputs for a in answers],
            input_tokens=sum(a.input_tokens or 0 for a in answers),
            output_tokens=sum(a.output_tokens or 0 for a in answers),
        )

    async def stream(self, requests: pa.Array, options: CallOptions) -> AsyncIterator[Piece]:
        """One row's answer as the Messages API streams it: `content_block_delta` texts, then the tokens of
        `message_start` (input) and `message_delta` (output)."""
        tokens_in = tokens_out = None
        url, payload = self._request(conversations(requests)[0], options)
        async for event in post_events(
            self, url, {**payload, "stream": True}, {"anthropic-version": API_VERSION}
        ):
            kind = event.get("type")
            if kind == "error":
                raise RemoteError(f"Endpoint {self.endpoint.name!r}: the stream failed: {str(event)[:200]}")
            if kind == "message_start":
                tokens_in = ((event.get("message") or {}).get("usage") or {}).get("input_tokens")
            elif kind == "message_delta":
                tokens_out = (event.get("usage") or {}).get("output_tokens", tokens_out)
            elif kind == "content_block_delta":
                text = (event.get("delta") or {}).get("text")
                if text:
                    yield text
        yield Prediction(None, tokens_in, tokens_out)

    async def _message(self, chat: list[Message], options: CallOptions) -> Prediction:
        url, payload = self._request(chat, options)
        reply = await self.post_json(url, payload, headers={"anthropic-version": API_VERSION})
        blocks = reply.get("content") if isinstance(reply, dict) else None
        if not isinstance(blocks, list):
            raise RemoteError(
                f"Endpoint {self.endpoint.name!r}: the reply has no content: {str(reply)[:200]}"
            )
        answer = "".join(b.get("text", "") for b in blocks if b.get("type") == "text")
        usage = reply.get("usage") or {}
        return Prediction(answer, usage.get("input_tokens"), usage.get("output_tokens"))

    def _request(self, chat: list[Message], options: CallOptions) -> tuple[str, dict[str, Any]]:
        """The Messages API's URL and body for one conversation."""
        parameters = generation_parameters(options.parameters)
        if "stop" in parameters:  # the Messages API calls it stop_sequences
            stop = parameters.pop("stop")
            parameters["stop_sequences"] = [stop] if isinstance(stop, str) else stop
        # The Messages API takes the system prompt apart from the turns
        system = (
            "\n".join(m["content"] for m in chat if m["role"] == "system") or self.options.system_prompt or ""
        )
        shape = wanted_schema(options)
        if shape is not None:
            # No JSON mode in the Messages API: ask for it, then the runtime validates every reply.
            schema = f" matching this JSON schema: {json.dumps(shape[1])}" if shape[1] else ""
            system = (
                system + "\n" if system else ""
            ) + f"Answer with one JSON value{schema}, and nothing else."
        payload: dict[str, Any] = {
            "model": self.options.model,
            "max_tokens": self.options.max_tokens,
            "messages": [m for m in chat if m["role"] != "system"],
            **parameters,
        }
        if system:
            payload["system"] = system
        return join_url(self.options.base_url, "v1/messages"), payload
