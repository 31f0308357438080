"""The bridge between callers' threads and the runtime's event loop: calls submitted as futures, tracked by
whose they are (so one caller's can be cancelled), a server's own loop adopted, a stream of batches scored
with a few in flight."""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections import deque
from collections.abc import Callable, Coroutine, Iterable, Sequence
from typing import Any, TypeVar

import pyarrow as pa

from aifuncs.providers import Provider
from aifuncs.runtime._bulk import one_native_thread_per_call, prompt_gil_handoffs, steps_ahead
from aifuncs.runtime._call import CallSpec, RequestContext
from aifuncs.runtime._loop import BackgroundLoop

T = TypeVar("T")
Submit = Callable[..., concurrent.futures.Future[pa.Array]]


class LoopBridge:
    def __init__(self) -> None:
        self._loop = BackgroundLoop()
        self._running: dict[asyncio.Task[Any], RequestContext] = {}  # submitted calls (loop thread only)

    def submit(self, context: RequestContext, work: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        """Run `work` on the loop, as one of `context`'s calls (see `cancel`)."""
        return self._loop.submit(self._tracked(context, work))

    async def _tracked(self, context: RequestContext, work: Coroutine[Any, Any, T]) -> T:
        task = asyncio.current_task()
        assert task is not None
        self._running[task] = context
        try:
            return await work
        finally:
            del self._running[task]

    def cancel(self, context: RequestContext, timeout_s: float) -> None:
        """Cancel `context`'s submitted calls still running and wait until each has ended."""

        async def cancel() -> None:
            tasks = [task for task, owner in self._running.items() if owner == context]
            for task in tasks:
                task.cancel()
            if tasks:
                await asyncio.wait(tasks, timeout=timeout_s)

        self._loop.run(cancel())

    def running_here(self) -> bool:
        return self._loop.running_here()

    def adopt(self, loop: asyncio.AbstractEventLoop) -> bool:
        return self._loop.adopt(loop)


def score_stream(
    submit: Submit,
    providers: Sequence[Provider],
    calls: Sequence[CallSpec],
    batches: Iterable[Sequence[pa.Array | pa.ChunkedArray]],
    step: int | None,
) -> list[list[pa.Array]]:
    """Answer a stream of batches (one column per call) in order, reading the next while earlier ones are
    scored, with a few batches in flight at most; `submit(call, column, batch_rows=...)` hands one over."""
    native = max((p.concurrency for p in providers if p.in_process), default=1)
    call_rows = [min(filter(None, (c.bulk_rows, step)), default=None) for c in calls]
    ahead: int | None = None
    answers: list[list[pa.Array]] = []
    pending: deque[list[concurrent.futures.Future[pa.Array]]] = deque()
    with one_native_thread_per_call(native), prompt_gil_handoffs(native):
        try:
            for batch in batches:
                if ahead is None:
                    ahead = steps_ahead(call_rows, providers, len(batch[0]) if batch else 0)
                pending.append(
                    [
                        submit(c, col, batch_rows=rows)
                        for c, col, rows in zip(calls, batch, call_rows, strict=True)
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
