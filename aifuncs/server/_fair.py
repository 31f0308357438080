"""A pool of threads shared fairly between principals: SQL over HTTP's statements run here.

A plain FIFO pool lets one principal's queue of long statements fill every thread while another's waits
behind them. Here a principal runs at most `share` jobs at once, and a free thread takes the oldest job of
the principal that runs the fewest: one token holder cannot starve the others.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from itertools import count

__all__ = ["FairPool"]


@dataclass
class _Job:
    owner: str
    work: Callable[[], None]
    future: Future[None] = field(default_factory=Future)
    order: int = 0


class FairPool:
    def __init__(self, threads: int, share: int, name: str) -> None:
        self._threads, self._share, self._name = threads, share, name
        self._queue: list[_Job] = []
        self._running: dict[str, int] = {}
        self._ready = threading.Condition()
        self._started = 0
        self._closed = False
        self._order = count()

    def submit(self, owner: str, work: Callable[[], None]) -> Future[None]:
        job = _Job(owner, work, order=next(self._order))
        with self._ready:
            if self._closed:
                raise RuntimeError("the pool is closed")
            self._queue.append(job)
            if self._started < self._threads:  # threads start as work comes, up to the bound
                self._started += 1
                threading.Thread(
                    target=self._serve, name=f"{self._name}-{self._started}", daemon=True
                ).start()
            self._ready.notify()
        return job.future

    def close(self) -> None:
        """No new jobs; those not started are cancelled. Jobs running finish on their own."""
        with self._ready:
            self._closed = True
            waiting, self._queue = self._queue, []
            self._ready.notify_all()
        for job in waiting:
            job.future.cancel()

    def _next(self) -> _Job | None:
        runnable = [j for j in self._queue if self._running.get(j.owner, 0) < self._share]
        if not runnable:
            return None
        job = min(runnable, key=lambda j: (self._running.get(j.owner, 0), j.order))
        self._queue.remove(job)
        self._running[job.owner] = self._running.get(job.owner, 0) + 1
        return job

    def _serve(self) -> None:
        while True:
            with self._ready:
                job = self._next()
                while job is None:
                    if self._closed:
                        return
                    self._ready.wait()
                    job = self._next()
            try:
                if job.future.set_running_or_notify_cancel():
                    try:
                        job.work()
                    except BaseException as error:  # the work reports its own errors; this is a last resort
                        job.future.set_exception(error)
                    else:
                        job.future.set_result(None)
            finally:
                with self._ready:
                    self._running[job.owner] -= 1
                    if not self._running[job.owner]:
                        del self._running[job.owner]
                    self._ready.notify_all()  # a job its owner's share held back may run now
