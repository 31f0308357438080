"""`openai` endpoints: any OpenAI-compatible server (OpenAI, vLLM, llama.cpp, Ollama, Databricks models).

Chat and completions send one prompt per request; embeddings send many rows per request.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any, ClassVar, Literal

import pyarrow as pa
from pydantic import Field

from aifuncs.errors import RemoteError
from aifuncs.providers._chat import (
    Message,
    Piece,
    conversations,
    generation_parameters,
    greedy,
    prompts,
    usage_tokens,
    wanted_schema,
)
from aifuncs.providers._http import HttpOptions, HttpProvider, join_url
from aifuncs.providers._sse import post_events
from aifuncs.providers.base import CallOptions, Prediction


class OpenAIOptions(HttpOptions):
    model: str = Field(description="The model name the server knows.")
    base_url: str = Field(default="https://api.openai.com/v1", description="Up to and including /v1.")
    task: Literal["chat", "completions", "embeddings"] = Field(default="chat")
    system_prompt: str | None = Field(default=None, description="Sent before every chat prompt.")
    schema_style: Literal["openai", "llama.cpp"] = Field(
        default="openai",
        description='How a JSON schema is sent: OpenAI\'s {"type": "json_schema"}, or llama.cpp\'s'
        ' {"type": "json_object", "schema": ...}.',
    )


class OpenAIProvider(HttpProvider):
    kind = "openai"
    Options = OpenAIOptions
    options: OpenAIOptions
    streams: ClassVar[bool] = True  # chat and completions (`stream`); embeddings have no text to stream

    @property
    def returns_text(self) -> bool:  # type: ignore[override]
        return self.options.task != "embeddings"

    @property
    def batch_rows(self) -> int:
        if self.options.task == "embeddings":
            return self.options.max_batch_rows or 64
        return 1  # one prompt per chat or completion request

    def deterministic(self, options: CallOptions) -> bool:
        return self.options.task == "embeddings" or greedy(options)

    def output_type(self) -> str | None:
        if self.options.returns:
            return self.options.returns
        return "FLOAT[]" if self.options.task == "embeddings" else "VARCHAR"

    async def predict(self, requests: pa.Array, options: CallOptions) -> Any:
        if self.options.task != "chat":
            texts = prompts(requests)
            if self.options.task == "embeddings":
                return await self._embed(texts, options)
            answers = await asyncio.gather(*(self._complete(text, options) for text in texts))
        else:
            chats = conversations(requests, self.options.system_prompt)
            answers = await asyncio.gather(*(self._complete(chat, options) for chat in chats))
        return Prediction(
            [a.outputs for a in answers],
            input_tokens=_sum(a.input_tokens for a in answers),
            output_tokens=_sum(a.output_tokens for a in answers),
        )

    async def _complete(self, request: str | list[Message], options: CallOptions) -> Prediction:
        payload: dict[str, Any] = {"model": self.options.model, **generation_parameters(options.parameters)}
        if isinstance(request, str):  # the completions task: a prompt
            reply = await self.post_json(
                join_url(self.options.base_url, "completions"), {**payload, "prompt": request}
            )
            answer = _first_choice(reply, self.endpoint.name).get("text")
        else:
            payload["messages"] = request
            shape = wanted_schema(options)
            if shape is not None:
                payload["response_format"] = self._response_format(*shape)
            reply = await self.post_json(join_url(self.options.base_url, "chat/completions"), payload)
            answer = (_first_choice(reply, self.endpoint.name).get("message") or {}).get("content")
        usage = reply.get("usage") or {}
        return Prediction(answer, usage.get("prompt_tokens"), usage.get("completion_tokens"))

    async def stream(self, requests: pa.Array, options: CallOptions) -> AsyncIterator[Piece]:
        """One row's answer as the server writes it (`stream: true`), then its usage (asked for with
        `stream_options.include_usage`; servers that ignore it leave the tokens unknown)."""
        payload: dict[str, Any] = {
            "model": self.options.model,
            **generation_parameters(options.parameters),
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if self.options.task == "completions":
            url, field = join_url(self.options.base_url, "completions"), "text"
            payload["prompt"] = prompts(requests)[0]
        else:
            url, field = join_url(self.options.base_url, "chat/completions"), "content"
            payload["messages"] = conversations(requests, self.options.system_prompt)[0]
            shape = wanted_schema(options)
            if shape is not None:
                payload["response_format"] = self._response_format(*shape)
        usage: Any = None
        async for event in post_events(self, url, payload):
            if "error" in event:
                raise RemoteError(f"Endpoint {self.endpoint.name!r}: the stream failed: {str(event)[:200]}")
            usage = event.get("usage") or usage
            for choice in event.get("choices") or []:
                text = (choice.get("delta") or {}).get(field) if field == "content" else choice.get(field)
                if text:
                    yield text
        yield usage_tokens(usage, "prompt_tokens", "completion_tokens")

    def _response_format(self, kind: str, schema: dict[str, Any] | None) -> dict[str, Any]:
        if self.options.schema_style == "llama.cpp" or kind == "json_object" or schema is None:
            return {"type": "json_object", **({"schema": schema} if schema else {})}
        return {"type": "json_schema", "json_schema": {"name": "answer", "schema": schema, "strict": True}}

    async def _embed(self, texts: list[str], options: CallOptions) -> Prediction:
        payload = {"model": self.options.model, "input": texts, **generation_parameters(options.parameters)}
        reply = await self.post_json(join_url(self.options.base_url, "embeddings"), payload)
        data = sorted(reply.get("data") or [], key=lambda d: d.get("index", 0))
        if len(data) != len(texts):
            raise RemoteError(
                f"Endpoint {self.endpoint.name!r}: {len(texts)} texts sent, {len(data)} embeddings returned."
            )
        usage = reply.get("usage") or {}
        return Prediction([d["embedding"] for d in data], usage.get("prompt_tokens"), None)


def _first_choice(reply: Any, endpoint: str) -> dict[str, Any]:
    choices = reply.get("choices") if isinstance(reply, dict) else None
    if not choices:
        raise RemoteError(f"Endpoint {endpoint!r}: the reply has no choices: {str(reply)[:200]}")
    return choices[0]


def _sum(values: Any) -> int | None:
    numbers = [v for v in values if v is not None]
    return sum(numbers) if numbers else None
