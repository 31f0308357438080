"""Scoring a batch's requests: split into requests sized for the endpoint, sent concurrently, failed ones
bisected so the rows that can be answered are, answers parsed into the call's type and kept as they come."""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

import pyarrow as pa

from aifuncs._types import arrow_type, parse_replies, to_arrow
from aifuncs.catalog import Endpoint
from aifuncs.errors import (
    BudgetExceeded,
    ConfigError,
    MissingDependency,
    ModelError,
    RateLimited,
    RemoteError,
    ReplyParseError,
    ResultTypeError,
)
from aifuncs.providers import Provider
from aifuncs.runtime._accounting import describe
from aifuncs.runtime._call import CallSpec, EntityFailure, Scored
from aifuncs.runtime._limit import AdaptiveLimit, GatePlace
from aifuncs.runtime._sending import Sender
from aifuncs.runtime._tasks import answer_task

T = TypeVar("T")
Keep = Callable[[list[bytes], pa.Array, list[str | None]], Awaitable[None]]


class Scorer:
    """Scores batches through a `Sender`; its state (row caps, places) is touched on the loop thread only."""

    def __init__(self, provider: Callable[[Endpoint], Provider], sender: Sender) -> None:
        self._provider = provider
        self._sender = sender
        self._gates: dict[str, asyncio.Semaphore] = {}  # per endpoint: requests sent, answers not committed
        self._row_caps: dict[str, int] = {}  # per endpoint: rows per request after a 413 Payload Too Large

    async def score(
        self,
        call: CallSpec,
        requests: pa.Array,
        batch_rows: int | None,
        keys: list[bytes] | None = None,
        keep: Keep | None = None,
    ) -> Scored:
        provider = self._provider(call.endpoint)
        target = arrow_type(call.result_type)
        limit = self._sender.limit(call.endpoint, self._sender.most_in_flight(provider), call.processes)
        size = batch_rows or provider.batch_rows
        size = min(size, self._row_caps.get(call.endpoint.identity, size))  # after a 413
        refused: list[BudgetExceeded] = []
        chunks = [
            self._score_chunk(
                provider,
                call,
                requests.slice(start, size),
                target,
                limit,
                None if keys is None else keys[start : start + size],
                keep,
                refused,
            )
            for start in range(0, len(requests), size)
        ]
        parts = await _all_or_nothing(chunks)
        if refused:  # raised only now: the requests in flight when the budget ran out finished and were kept
            raise refused[0]
        return concat(parts, target)

    async def _score_chunk(
        self,
        provider: Provider,
        call: CallSpec,
        chunk: pa.Array,
        target: pa.DataType,
        limit: AdaptiveLimit,
        keys: list[bytes] | None = None,
        keep: Keep | None = None,
        refused: list[BudgetExceeded] | None = None,
    ) -> Scored:
        # Answers that are kept hold a place from before the request is sent until they are committed: the
        # in-flight limit frees its place when the reply arrives, and without this bound replies waiting for
        # a slow commit would pile up, all of them paid again if the process is killed.
        place = GatePlace(self._unkept(call.endpoint, provider) if keep is not None else None)
        await place.take()
        try:
            try:
                if call.task is not None:

                    def predict(rows: pa.Array) -> Awaitable[Any]:
                        return self._sender.predict(provider, call, rows, limit, place)

                    values, row_errors = await answer_task(call, provider, chunk, target, predict)
                else:
                    values, row_errors = await self._answer_model(provider, call, chunk, target, limit, place)
                if len(values) != len(chunk):
                    raise ResultTypeError(
                        f"The model returned {len(values)} results for {len(chunk)} requests."
                    )
            except (ConfigError, MissingDependency, RateLimited):
                raise  # the endpoint is broken, or the caller will not wait: no row can succeed
            except BudgetExceeded as error:
                if refused is None:
                    raise
                refused.append(error)
                return pa.nulls(len(chunk), target), [str(error)] * len(chunk)
            except Exception as error:
                too_large = isinstance(error, RemoteError) and error.status == 413 and len(chunk) > 1
                if too_large:  # the endpoint takes fewer rows per request: from now on, and for these rows
                    key = call.endpoint.identity
                    self._row_caps[key] = min(self._row_caps.get(key, len(chunk)), max(1, len(chunk) // 2))
                elif call.fail_on_error:
                    raise ModelError(call.endpoint.name, len(chunk), describe(error)) from error
                elif len(chunk) == 1 or (isinstance(error, RemoteError) and error.retryable):
                    # A request that failed after its retries: each row carries the message.
                    return pa.nulls(len(chunk), target), [row_error(error)] * len(chunk)
                place.give()  # the halves take places of their own
                # Bisect to find the rows that fail; the others keep their answers.
                half = len(chunk) // 2
                parts = await asyncio.gather(
                    self._score_chunk(
                        provider,
                        call,
                        chunk.slice(0, half),
                        target,
                        limit,
                        keys and keys[:half],
                        keep,
                        refused,
                    ),
                    self._score_chunk(
                        provider, call, chunk.slice(half), target, limit, keys and keys[half:], keep, refused
                    ),
                )
                return concat(list(parts), target)
            if keep is not None and keys is not None:
                await keep(keys, values, row_errors)  # stored before the query goes on: a rerun resumes here
            return values, row_errors
        finally:
            place.give()

    async def _answer_model(
        self,
        provider: Provider,
        call: CallSpec,
        chunk: pa.Array,
        target: pa.DataType,
        limit: AdaptiveLimit,
        place: GatePlace | None = None,
    ) -> Scored:
        """ai_query's rows: the model's output as the call's type (a text reply parsed into it)."""
        output = await self._sender.predict(provider, call, chunk, limit, place)
        if not provider.returns_text or pa.types.is_string(target):
            return to_arrow(output, target), [None] * len(chunk)
        values, row_errors = parse_replies(to_arrow(output, pa.string()), target)
        if any(row_errors) and call.fail_on_error:
            first = next(i for i, e in enumerate(row_errors) if e)
            raise ReplyParseError(f"{row_errors[first]} (request {_start(chunk[first].as_py())})")
        return values, row_errors

    def _unkept(self, endpoint: Endpoint, provider: Provider) -> asyncio.Semaphore:
        """Requests of an endpoint sent but whose answers are not committed yet: at most twice its concurrency
        (once was measured to cost a third of the throughput at 32 in flight: commits lag under load)."""
        key = endpoint.identity
        if key not in self._gates:
            self._gates[key] = asyncio.Semaphore(2 * provider.concurrency)
        return self._gates[key]


def row_error(error: Exception) -> str:
    """The message a failed row carries; marked when the entity failed (another may answer the row)."""
    text = describe(error)
    if isinstance(error, RemoteError) and (
        error.retryable or error.status is None or error.status == 429 or error.status >= 500
    ):
        failure = EntityFailure(text)
        failure.status = error.status
        return failure
    return text


def concat(parts: list[Scored], target: pa.DataType) -> Scored:
    if len(parts) == 1:
        return parts[0]
    values = pa.concat_arrays([p[0] for p in parts]) if parts else pa.array([], target)
    return values, list(itertools.chain.from_iterable(p[1] for p in parts))


async def _all_or_nothing(coroutines: list[Coroutine[Any, Any, T]]) -> list[T]:
    """Like gather, but the first failure cancels the rest: a failed query must not go on calling the model."""
    if len(coroutines) == 1:
        return [await coroutines[0]]
    try:
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(c) for c in coroutines]
    except BaseExceptionGroup as failures:
        raise failures.exceptions[0] from None
    return [t.result() for t in tasks]


def _start(value: Any, length: int = 60) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return repr(text if len(text) <= length else text[: length - 3] + "...")
