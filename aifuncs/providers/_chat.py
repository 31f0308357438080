"""Shared by the LLM kinds: rows to prompts, and responseFormat / returnType to a JSON schema."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any, ClassVar, Protocol, runtime_checkable

import pyarrow as pa

from aifuncs._types import json_schema, to_duckdb_type
from aifuncs.errors import ArgumentError
from aifuncs.providers.base import CallOptions, Prediction

GENERATION_PARAMETERS = ("max_tokens", "temperature", "top_p", "stop")


def prompts(requests: pa.Array) -> list[str]:
    """A text request is the prompt; anything else (a STRUCT, a list) is sent as its JSON."""
    if pa.types.is_string(requests.type) or pa.types.is_large_string(requests.type):
        return [str(v) for v in requests.to_pylist()]
    return [json.dumps(v, default=str) for v in requests.to_pylist()]


Message = dict[str, str]


def conversations(requests: pa.Array, system_prompt: str | None = None) -> list[list[Message]]:
    """Each row as the messages a chat model is sent: a row holding `messages` ([{role, content}], a chat
    body's) is that conversation; any other row is one user message (its prompt). The endpoint's system
    prompt goes first where the conversation has none."""
    found: list[list[Message]] = []
    texts = prompts(requests) if not pa.types.is_struct(requests.type) else None
    for i, value in enumerate(requests.to_pylist()):
        if isinstance(value, dict) and isinstance(value.get("messages"), list):
            messages = [{"role": str(m.get("role") or "user"), "content": str(m.get("content") or "")}
                        for m in value["messages"] if isinstance(m, dict)]  # fmt: skip
        else:
            text = texts[i] if texts is not None else json.dumps(value, default=str)
            messages = [{"role": "user", "content": text}]
        if system_prompt and not any(m["role"] == "system" for m in messages):
            messages.insert(0, {"role": "system", "content": system_prompt})
        found.append(messages)
    return found


def wanted_schema(options: CallOptions) -> tuple[str, dict[str, Any] | None] | None:
    """What shape the reply must have: ("json_object", None), ("json_schema", schema) or None for free text.

    responseFormat may be a JSON schema, OpenAI's `{"type": "json_schema", ...}` or `{"type": "json_object"}`,
    or a DDL type string (`STRUCT<label: STRING>`), as in Databricks. Without one, a non-text returnType
    asks for a JSON object of that type.
    """
    given = options.response_format
    if given:
        try:
            parsed = json.loads(given)
        except json.JSONDecodeError:
            return "json_schema", json_schema(to_duckdb_type(given))  # a DDL type string
        if not isinstance(parsed, dict):
            raise ArgumentError(f"responseFormat must be a JSON object or a type string, not {given!r}.")
        if parsed.get("type") == "json_object":
            return "json_object", parsed.get("schema")
        if parsed.get("type") == "json_schema":
            inner = parsed.get("json_schema") or {}
            return "json_schema", inner.get("schema", inner)
        return "json_schema", parsed
    if options.result_type.upper().startswith("STRUCT"):
        return "json_schema", json_schema(options.result_type)
    return None


def generation_parameters(parameters: dict[str, Any] | None) -> dict[str, Any]:
    """modelParameters pass through as given (max_tokens, temperature, top_p, stop, and any other)."""
    return dict(parameters or {})


def greedy(options: CallOptions) -> bool:
    """Temperature 0: the model picks its likeliest token each time, so its answer is reproducible."""
    temperature = (options.parameters or {}).get("temperature")
    return isinstance(temperature, int | float) and temperature == 0


# A streamed answer: text deltas as the model writes them, then one `Prediction` (outputs None) with the tokens
# the model reported for the whole answer (None where it reports none).
Piece = str | Prediction


@runtime_checkable
class Streams(Protocol):
    """A provider that can stream one row's answer (`streams = True` on its class); the runtime is its caller."""

    streams: ClassVar[bool]

    def stream(self, requests: pa.Array, options: CallOptions) -> AsyncIterator[Piece]:
        """The answer to the one request in `requests`, piece by piece; closing the iterator stops the model."""
        ...


def can_stream(provider: Any) -> bool:
    return bool(getattr(provider, "streams", False)) and getattr(provider, "returns_text", False)


def usage_tokens(usage: Any, prompt: str, completion: str) -> Prediction:
    """A streamed reply's final usage (OpenAI's or Anthropic's names) as a `Prediction` without outputs."""
    usage = usage if isinstance(usage, dict) else {}
    return Prediction(None, usage.get(prompt), usage.get(completion))
