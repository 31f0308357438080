"""The runtime: the only caller of providers.

An engine hands it one batch of requests for one call site; the runtime drops NULL requests, splits
the rest into requests sized for the endpoint, runs them concurrently on one background event loop,
converts the answers to the call's type and puts them back in row order, with per-row errors.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import os
import threading
from collections import deque
from collections.abc import Iterable, Iterator, Sequence

import pyarrow as pa
import pyarrow.compute as pc

from aifuncs._types import arrow_type, to_arrow
from aifuncs.catalog import Endpoint
from aifuncs.errors import AifuncsError, ConfigError, ModelError, ResultTypeError
from aifuncs.providers import Provider, provider_class
from aifuncs.runtime._call import CallSpec
from aifuncs.runtime._loop import BackgroundLoop

__all__ = ["CallSpec", "Runtime", "default_runtime"]

_MAX_MESSAGE = 1000

Scored = tuple[pa.Array, list[str | None]]


def describe(error: BaseException) -> str:
    text = str(error) if isinstance(error, AifuncsError) else f"{type(error).__name__}: {error}"
    return text if len(text) <= _MAX_MESSAGE else text[: _MAX_MESSAGE - 3] + "..."


class Runtime:
    def __init__(self) -> None:
        self._loop = BackgroundLoop()
        self._providers: dict[str, Provider] = {}
        self._semaphores: dict[str, asyncio.Semaphore] = {}
        self._lock = threading.Lock()

    def provider(self, endpoint: Endpoint) -> Provider:
        """The provider of an endpoint version, built once (models load once per process)."""
        key = _identity(endpoint)
        with self._lock:
            provider = self._providers.get(key)
            if provider is None:
                provider = provider_class(endpoint.kind)(endpoint)
                self._providers[key] = provider
            return provider

    def run_call(self, call: CallSpec, requests: pa.Array, *, batch_rows: int | None = None) -> pa.Array:
        """Answer one batch for a call site: one value per request, NULL for NULL requests.

        `batch_rows` overrides the endpoint's rows per model call (the planner's bulk path).
        """
        return self.submit_call(call, requests, batch_rows=batch_rows).result()

    def submit_call(
        self, call: CallSpec, requests: pa.Array, *, batch_rows: int | None = None
    ) -> concurrent.futures.Future[pa.Array]:
        """`run_call` without waiting: the answers arrive in the returned future."""
        return self._loop.submit(self._answer(call, requests, batch_rows))

    def score_batches(
        self, calls: Sequence[CallSpec], batches: Iterable[Sequence[pa.Array]]
    ) -> list[list[pa.Array]]:
        """Answer a stream of batches (one column per call) in big model calls, in order (the bulk path).

        The next batch is read while earlier ones are scored, with a few batches in flight at most,
        so memory stays bounded however long the stream is.
        """
        ahead = max(self.provider(c.endpoint).concurrency for c in calls) if calls else 1
        answers: list[list[pa.Array]] = []
        pending: deque[list[concurrent.futures.Future[pa.Array]]] = deque()
        with _one_native_thread_per_call(ahead):
            try:
                for batch in batches:
                    pending.append(
                        [
                            self.submit_call(c, col, batch_rows=c.bulk_rows)
                            for c, col in zip(calls, batch, strict=True)
                        ]
                    )
                    if len(pending) > ahead:
                        answers.append([f.result() for f in pending.popleft()])
                while pending:
                    answers.append([f.result() for f in pending.popleft()])
            except BaseException:
                for futures in pending:
                    for future in futures:
                        future.cancel()
                raise
        return answers

    async def _answer(self, call: CallSpec, requests: pa.Array, batch_rows: int | None) -> pa.Array:
        output = arrow_type(call.output_type)
        valid = requests.is_valid()
        valid_count = pc.sum(valid).as_py() or 0
        if valid_count == 0:
            return pa.nulls(len(requests), output)
        present = requests if valid_count == len(requests) else requests.filter(valid)
        values, errors = await self._score(call, present, batch_rows)
        if not call.fail_on_error:
            messages = pa.array(errors, pa.string())
            values = pa.StructArray.from_arrays([values, messages], fields=list(output))
        if valid_count == len(requests):
            return values
        # Scatter back: the i-th present row goes to the i-th valid position; NULL requests stay NULL.
        positions = pc.subtract(pc.cumulative_sum(valid.cast(pa.int64())), 1)
        return values.take(pc.if_else(valid, positions, pa.scalar(None, pa.int64())))

    async def _score(self, call: CallSpec, requests: pa.Array, batch_rows: int | None) -> Scored:
        provider = self.provider(call.endpoint)
        target = arrow_type(call.result_type)
        semaphore = self._semaphore(call.endpoint, provider.concurrency)
        size = batch_rows or provider.batch_rows
        chunks = [requests.slice(start, size) for start in range(0, len(requests), size)]
        parts = await asyncio.gather(
            *(self._score_chunk(provider, call, c, target, semaphore) for c in chunks)
        )
        return _concat(parts, target)

    async def _score_chunk(
        self,
        provider: Provider,
        call: CallSpec,
        chunk: pa.Array,
        target: pa.DataType,
        semaphore: asyncio.Semaphore,
    ) -> Scored:
        try:
            async with semaphore:
                output = await provider.predict(chunk, call.parameters)
            values = to_arrow(output, target)
            if len(values) != len(chunk):
                raise ResultTypeError(f"The model returned {len(values)} results for {len(chunk)} requests.")
            return values, [None] * len(chunk)
        except ConfigError:
            raise  # the endpoint itself is broken: no row can succeed
        except Exception as error:
            if call.fail_on_error:
                raise ModelError(call.endpoint.name, len(chunk), describe(error)) from error
            if len(chunk) == 1:
                return pa.nulls(1, target), [describe(error)]
            # Bisect to find the rows that fail; the others keep their answers.
            half = len(chunk) // 2
            parts = await asyncio.gather(
                self._score_chunk(provider, call, chunk.slice(0, half), target, semaphore),
                self._score_chunk(provider, call, chunk.slice(half), target, semaphore),
            )
            return _concat(list(parts), target)

    def _semaphore(self, endpoint: Endpoint, limit: int) -> asyncio.Semaphore:
        key = _identity(endpoint)
        if key not in self._semaphores:  # only touched on the loop thread
            self._semaphores[key] = asyncio.Semaphore(limit)
        return self._semaphores[key]


@contextlib.contextmanager
def _one_native_thread_per_call(concurrent_calls: int) -> Iterator[None]:
    """Several in-process model calls at once, each with its own multi-threaded BLAS/OpenMP pool, oversubscribe
    the CPU and run slower than one call alone (measured: 2 calls on 2 cores, 57 ms with 2 BLAS threads each,
    37 ms with 1). As joblib does for nested parallelism, limit the native pools while the calls run."""
    if concurrent_calls <= 1 or (os.cpu_count() or 1) <= 1:
        yield
        return
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - a dependency; without it the calls only run slower
        yield
        return
    with threadpool_limits(limits=1):
        yield


def _identity(endpoint: Endpoint) -> str:
    # Name and version alone are not unique: a deleted and re-created endpoint, or another AIFUNCS_HOME.
    return json.dumps(
        [endpoint.name, endpoint.version, endpoint.kind, endpoint.options], sort_keys=True, default=str
    )


def _concat(parts: list[Scored], target: pa.DataType) -> Scored:
    if len(parts) == 1:
        return parts[0]
    values = pa.concat_arrays([p[0] for p in parts]) if parts else pa.array([], target)
    return values, [e for p in parts for e in p[1]]


_default: Runtime | None = None
_default_lock = threading.Lock()


def default_runtime() -> Runtime:
    global _default
    with _default_lock:
        if _default is None:
            _default = Runtime()
        return _default
