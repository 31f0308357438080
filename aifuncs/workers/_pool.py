"""The worker processes of one in-process endpoint version (entity), and how many there are.

Batches wait in one line and go to an idle worker, the one idle most recently first (so a light load keeps
few workers busy, and the others go idle and are released). A worker that dies or hangs is replaced, and the
batch it held tried once more on another; a second loss fails the batch with a retryable `RemoteError` (503).

Scaling, checked every `TICK_S`: the pool aims at the batches in flight and waiting (smoothed) over
`TARGET_BUSY` per worker, one more while batches wait and none is starting, between its floor and its size
(`workload_size`); a worker idle for `idle_s` above the floor is released. With `scale_to_zero_enabled` the
floor is 0: the next request starts a worker and waits for its model to load (a cold start, measured).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from aifuncs._endpoint import Endpoint
from aifuncs.errors import RemoteError
from aifuncs.providers.base import CallOptions, Prediction, ProviderOptions
from aifuncs.workers._process import LoadFailed, StreamLost, Worker, WorkerLost

TICK_S = 0.1
TARGET_BUSY = 0.7  # share of its time a worker should be busy at most: above it, requests queue
_SMOOTHING = 0.3  # per tick: the demand the pool aims at follows a change within about a second
_SIZES = {"Small": 1, "Medium": 4, "Large": 16}
_END = object()
_RETRY_LOAD_S = (5.0, 300.0)  # after a failed load, the next try waits this long, doubling up to the second


def most_workers(options: ProviderOptions, cores: int | None = None) -> int:
    """Workers an entity may have: its workload size, never more than the machine's cores."""
    return max(1, min(_SIZES[options.workload_size], cores or os.cpu_count() or 1))


@dataclass
class _Batch:
    rows: pa.Array | pa.ChunkedArray
    options: CallOptions
    chunked: bool
    answer: asyncio.Future[Any]
    queued_at: float = field(default_factory=time.monotonic)
    tries: int = 0
    # A streamed request: its pieces as they come (the answer is then the tokens used), how many reached the
    # caller, the worker writing it, and whether its caller went away.
    pieces: asyncio.Queue[Any] | None = None
    handed: int = 0
    worker: Worker | None = None
    gone: bool = False


class Pool:
    """One endpoint version's workers. Used on one event loop (the server's)."""

    def __init__(self, endpoint: Endpoint, options: ProviderOptions) -> None:
        self.endpoint = endpoint
        self.options = options
        self.most = most_workers(options)
        self.floor = 0 if options.scale_to_zero_enabled else min(options.min_workers, self.most)
        self._workers: list[Worker] = []
        self._starting = 0
        self._waiting: deque[_Batch] = deque()
        self._demand = 0.0
        self._ordinal = 0
        self._last_request = time.monotonic()
        self._ticker: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closed = False
        self.retired = False  # a newer version of the endpoint took over: release every worker once idle
        # What the pool shows (`state`)
        self.ever_ready = False
        self.load_error: str | None = None
        self._retry_load_at = 0.0
        self._retry_wait_s = _RETRY_LOAD_S[0]
        self.load_s: float | None = None
        self.cold_start_s: float | None = None
        self.restarts = 0
        self.retried = 0
        self.streams_stopped = 0  # streams whose model stopped writing because the caller went away

    # -- requests --------------------------------------------------------------------------------------------

    async def predict(self, rows: pa.Array | pa.ChunkedArray, options: CallOptions, chunked: bool) -> Any:
        self._last_request = time.monotonic()
        self._open()
        self.ensure_running()
        if not self._ready() and not self._starting:
            if self.load_error is not None and time.monotonic() < self._retry_load_at:
                raise self._not_ready()
            self._start_one(cold=True)
        batch = _Batch(rows, options, chunked, asyncio.get_running_loop().create_future())
        self._waiting.append(batch)
        self._dispatch()
        return await batch.answer

    async def stream(self, rows: pa.Array, options: CallOptions) -> AsyncIterator[str | Prediction]:
        """One row's answer piece by piece from a worker, then a `Prediction` with the tokens used. A worker lost
        before the first piece: asked once more on another; after it, the stream ends with a 503 (the caller
        has part of an answer). Closing the iterator (the caller went away) stops the model in its worker."""
        self._last_request = time.monotonic()
        self._open()
        self.ensure_running()
        if not self._ready() and not self._starting:
            if self.load_error is not None and time.monotonic() < self._retry_load_at:
                raise self._not_ready()
            self._start_one(cold=True)
        pieces: asyncio.Queue[Any] = asyncio.Queue()
        batch = _Batch(rows, options, False, asyncio.get_running_loop().create_future(), pieces=pieces)
        batch.answer.add_done_callback(lambda _: pieces.put_nowait(_END))
        self._waiting.append(batch)
        self._dispatch()
        try:
            while (piece := await pieces.get()) is not _END:
                yield piece
            yield Prediction(None, *batch.answer.result())
        finally:
            if not batch.answer.done():  # the caller went away: the model stops writing
                batch.gone = True
                if batch.worker is not None:
                    batch.worker.stop_stream()
                else:
                    batch.answer.cancel()  # still waiting for a worker: dropped from the line

    def _open(self) -> None:
        """A closed pool starts no worker: a batch sent to it would wait for ever."""
        if self._closed:
            raise RemoteError(
                f"Endpoint {self.endpoint.name!r}: this version's model workers were released; retry.",
                status=503, retryable=True,
            )  # fmt: skip

    def _not_ready(self) -> RemoteError:
        wait = max(1.0, self._retry_load_at - time.monotonic())
        return RemoteError(
            f"Endpoint {self.endpoint.name!r} is not ready: its model failed to load ({self.load_error})."
            f" The server tries again in {wait:.0f} s.",
            status=503, retryable=True, retry_after=wait,
        )  # fmt: skip

    def _ready(self) -> list[Worker]:
        return [w for w in self._workers if w.ready]

    def _dispatch(self) -> None:
        while self._waiting:
            if self._waiting[0].answer.done():  # its caller gave up
                self._waiting.popleft()
                continue
            idle = [w for w in self._workers if w.ready and not w.busy]
            if not idle:
                return
            worker = max(idle, key=lambda w: w.idle_since)  # the most recently used: others may go idle
            batch = self._waiting.popleft()
            worker.busy = True
            self._spawn(self._run(worker, batch))

    async def _run(self, worker: Worker, batch: _Batch) -> None:
        if batch.pieces is not None:
            await self._run_stream(worker, batch)
            self._dispatch()
            return
        batch.tries += 1
        try:
            output = await worker.call(
                batch.rows, batch.options, batch.chunked, self.options.worker_timeout_s
            )
        except WorkerLost as lost:
            self._lost(worker)
            if batch.tries < 2 and not batch.answer.done():
                self.retried += 1
                self._waiting.appendleft(batch)  # once more, first in line, on another worker
            elif not batch.answer.done():
                batch.answer.set_exception(
                    RemoteError(f"Endpoint {self.endpoint.name!r}: {lost} (tried twice).", status=503, retryable=True)
                )  # fmt: skip
        except Exception as error:  # the model's own failure on this batch: the worker is fine
            self._free(worker)
            if not batch.answer.done():
                batch.answer.set_exception(error)
        else:
            self._free(worker)
            if not batch.answer.done():
                batch.answer.set_result(output)
        self._dispatch()

    async def _run_stream(self, worker: Worker, batch: _Batch) -> None:
        assert batch.pieces is not None
        pieces = batch.pieces
        batch.tries += 1
        batch.worker = worker

        def hand_on(piece: str) -> None:
            if not batch.gone:
                batch.handed += 1
                pieces.put_nowait(piece)

        try:
            tokens, stopped = await worker.stream(
                batch.rows, batch.options, self.options.worker_timeout_s, hand_on
            )
        except StreamLost as lost:
            batch.worker = None
            self._lost(worker)
            if batch.answer.done() or batch.gone:
                return
            if not batch.handed and batch.tries < 2:
                self.retried += 1
                self._waiting.appendleft(batch)  # nothing reached the caller: once more, on another worker
                return
            after = f" after {batch.handed} pieces" if batch.handed else " (tried twice)"
            batch.answer.set_exception(
                RemoteError(f"Endpoint {self.endpoint.name!r}: {lost}{after}.", status=503, retryable=not batch.handed)
            )  # fmt: skip
        except Exception as error:  # the model's own failure: the stream ends with it, the worker is fine
            batch.worker = None
            self._free(worker)
            if not batch.answer.done():
                batch.answer.set_exception(error)
        else:
            batch.worker = None
            self._free(worker)
            self.streams_stopped += stopped
            if not batch.answer.done():
                batch.answer.set_result(tokens)

    def _free(self, worker: Worker) -> None:
        worker.busy = False
        worker.idle_since = time.monotonic()

    def _lost(self, worker: Worker) -> None:
        worker.kill()
        if worker in self._workers:
            self._workers.remove(worker)
        self.restarts += 1
        if not self._closed and len(self._workers) + self._starting < max(self.floor, 1):
            self._start_one(cold=False)  # replaced at once; the scaler adds more if the load needs them

    # -- workers ---------------------------------------------------------------------------------------------

    def ensure_running(self) -> None:
        """Start the scaler (on the running loop) and the floor's workers: the model loads now."""
        if self._ticker is None and not self._closed:
            self._ticker = asyncio.ensure_future(self._tick())
            for _ in range(max(self.floor, 1) - len(self._workers) - self._starting):
                self._start_one(cold=False)

    def _start_one(self, cold: bool) -> None:
        self._starting += 1
        self._spawn(self._start(cold))

    async def _start(self, cold: bool) -> None:
        self._ordinal += 1
        worker = Worker(self._ordinal)
        threads = max(1, (os.cpu_count() or 1) // self.most) if self.most > 1 else None
        began = time.monotonic()
        try:
            load_s = await worker.start(self.endpoint, threads, self.options.load_timeout_s)
        except LoadFailed as error:
            self._starting -= 1
            self.load_error = str(error)
            self._retry_load_at = time.monotonic() + self._retry_wait_s
            self._retry_wait_s = min(self._retry_wait_s * 2, _RETRY_LOAD_S[1])
            if not self._ready() and not self._starting:  # nobody will answer those waiting
                while self._waiting:
                    batch = self._waiting.popleft()
                    if not batch.answer.done():
                        batch.answer.set_exception(self._not_ready())
            return
        except BaseException:
            self._starting -= 1
            worker.kill()
            raise
        self._starting -= 1
        if self._closed:
            await worker.stop()
            return
        self.load_s = load_s
        if cold:
            self.cold_start_s = time.monotonic() - began
        self.ever_ready = True
        self.load_error = None
        self._retry_wait_s = _RETRY_LOAD_S[0]
        self._workers.append(worker)
        self._spawn(self._watch(worker))
        self._dispatch()

    async def _watch(self, worker: Worker) -> None:
        """A worker that dies while idle (killed, out of memory) is noticed and replaced too."""
        assert worker.process is not None
        await worker.process.wait()
        if worker in self._workers and not worker.stopping and not worker.busy:
            self._lost(worker)
            self._dispatch()

    async def _tick(self) -> None:
        while not self._closed:
            await asyncio.sleep(TICK_S)
            self._scale()

    def _scale(self) -> None:
        busy = sum(1 for w in self._workers if w.busy)
        waiting = len(self._waiting)
        self._demand += _SMOOTHING * (busy + waiting - self._demand)
        now = time.monotonic()
        floor = 0 if self.retired else self.floor
        have = len(self._workers) + self._starting
        target = min(self.most, max(floor, math.ceil(self._demand / TARGET_BUSY - 1e-9)))
        if waiting and not self._starting:
            target = min(self.most, max(target, have + 1))
        if self.load_error is not None and now < self._retry_load_at:
            target = min(target, have)  # no new loads while the last one failed
        for _ in range(target - have):
            self._start_one(cold=not self._ready())
        idle = sorted((w for w in self._workers if w.ready and not w.busy), key=lambda w: w.idle_since)
        for worker in idle:
            if len(self._workers) <= floor or now - worker.idle_since < self.options.idle_s:
                break
            if waiting:
                break
            self._workers.remove(worker)
            self._spawn(worker.stop())

    def _spawn(self, work: Any) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- what it shows ---------------------------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        """The entity's state as the server shows it: READY, LOADING (never ready yet), SCALED_TO_ZERO,
        LOAD_FAILED (with why), and its workers."""
        ready = len(self._ready())
        if ready:
            name = "READY"
        elif self.load_error is not None and not self._starting:
            name = "LOAD_FAILED"
        elif self._starting and not self.ever_ready:
            name = "LOADING"
        elif self._starting:
            name = "STARTING"  # back from zero (or replacing its last worker): requests wait for it
        elif self.ever_ready:
            name = "SCALED_TO_ZERO"
        else:
            name = "NOT_STARTED"
        return {
            "state": name,
            "workers": ready,
            "starting": self._starting,
            "busy": sum(1 for w in self._workers if w.busy),
            "queued": len(self._waiting),
            "min_workers": self.floor,
            "max_workers": self.most,
            "scale_to_zero_enabled": self.options.scale_to_zero_enabled,
            "load_s": self.load_s,
            "cold_start_s": self.cold_start_s,
            "restarts": self.restarts,
            "retried": self.retried,
            "streams_stopped": self.streams_stopped,
            "error": self.load_error,
        }

    @property
    def closed(self) -> bool:
        return self._closed

    def empty(self) -> bool:
        """No worker, none starting, no batch waiting or answered: closing it now ends nothing under way."""
        return not self._workers and not self._starting and not self._waiting

    def pids(self) -> list[int]:
        return [w.pid for w in self._workers if w.pid is not None and w.ready]

    async def close(self) -> None:
        self._closed = True
        if self._ticker is not None:
            self._ticker.cancel()
        for batch in self._waiting:
            if not batch.answer.done():
                batch.answer.set_exception(
                    RemoteError(f"Endpoint {self.endpoint.name!r}: the server is stopping.", status=503, retryable=True)
                )  # fmt: skip
        self._waiting.clear()
        workers, self._workers = self._workers, []
        await asyncio.gather(*(w.stop() for w in workers), return_exceptions=True)
        for task in list(self._tasks):
            task.cancel()
        with contextlib.suppress(BaseException):
            await asyncio.gather(*self._tasks, return_exceptions=True)
