"""Requests in flight per endpoint: a limit that halves when the server pushes back and creeps back up."""

from __future__ import annotations

import asyncio
import random
from collections import deque
from types import TracebackType

BACKOFF_CAP_S = 30.0
RETRY_WAIT_CAP_S = 60.0


class AdaptiveLimit:
    """AIMD, as TCP does: on a 429 the limit halves, each success adds 1/limit, never above `maximum`.

    It halves at most once per window (as many completions as the limit): the 429s of requests already
    in flight when the server pushed back describe one event, not many.
    """

    def __init__(self, maximum: int) -> None:
        self.maximum = maximum
        self.limit = float(maximum)
        self.in_flight = 0
        self._since_decrease = maximum
        # Waiters in arrival order, each woken alone when a slot frees: a Condition's notify_all woke
        # every waiter per completion, which with thousands queued cost O(n^2) (2 ms CPU a request).
        self._waiters: deque[asyncio.Future[None]] = deque()

    async def __aenter__(self) -> None:
        if not self._waiters and self.in_flight < self._slots():
            self.in_flight += 1
            return
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter  # the slot is counted for us by `_wake`
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self._release()  # woken and cancelled at once: pass the slot on
            else:
                self._waiters.remove(waiter)
            raise

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._release()

    def _slots(self) -> int:
        return max(1, int(self.limit))

    def _release(self) -> None:
        self.in_flight -= 1
        self._wake()

    def _wake(self) -> None:
        while self._waiters and self.in_flight < self._slots():
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                self.in_flight += 1

    def throttled(self) -> None:
        if self._since_decrease >= self.limit:
            self.limit = max(1.0, self.limit / 2)
            self._since_decrease = 0

    def succeeded(self) -> None:
        self._since_decrease += 1
        self.limit = min(float(self.maximum), self.limit + 1 / self.limit)
        self._wake()


def backoff_s(attempt: int, base_s: float, retry_after: float | None) -> float:
    """Exponential backoff with full jitter; a server's Retry-After is a floor, capped at a minute."""
    jittered = random.uniform(0, min(BACKOFF_CAP_S, base_s * 2 ** (attempt - 1)))
    return min(RETRY_WAIT_CAP_S, max(retry_after or 0.0, jittered))
