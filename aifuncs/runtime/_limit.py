"""Requests in flight per endpoint: a limit that shrinks when the server pushes back or slows down, and
creeps back up while it keeps pace."""

from __future__ import annotations

import asyncio
import random
from collections import deque
from types import TracebackType

BACKOFF_CAP_S = 30.0
RETRY_WAIT_CAP_S = 60.0


# Latency: a request is "slow" when the smoothed latency exceeds this multiple of the best smoothed
# latency seen. Smoothing over ~20 requests keeps the varied lengths of LLM replies from reading as queueing.
LATENCY_TOLERANCE = 1.5
_SMOOTHING = 0.05
_BASELINE_DRIFT = 1.01  # per window the best latency is forgotten a little, so a new workload can settle


class AdaptiveLimit:
    """AIMD, as TCP does: each success adds 1/limit, never above `maximum`; on a 429 the limit halves; when
    latency climbs well above its best (the server is queueing our requests), it shrinks by a quarter.

    It shrinks at most once per window (as many completions as the limit): the 429s or slow replies of
    requests already in flight when the server pushed back describe one event, not many.
    """

    def __init__(self, maximum: int) -> None:
        self.maximum = maximum
        self.limit = float(maximum)
        self.in_flight = 0
        self._since_decrease = maximum
        self._latency: float | None = None  # smoothed, seconds
        self._best: float | None = None
        self._window = 0  # completions since the best latency last drifted
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
        self._shrink(0.5)

    def succeeded(self, latency_s: float | None = None) -> None:
        """A request succeeded; pass its latency where rising latency means congestion (remote servers)."""
        self._since_decrease += 1
        if latency_s is not None and self._slow(latency_s):
            self._shrink(0.75)
            return
        self.limit = min(float(self.maximum), self.limit + 1 / self.limit)
        self._wake()

    def _slow(self, latency_s: float) -> bool:
        smoothed = self._latency = (
            latency_s if self._latency is None else self._latency + _SMOOTHING * (latency_s - self._latency)
        )
        self._window += 1
        if self._best is None or smoothed < self._best:
            self._best = smoothed
        elif self._window >= self.limit:
            self._best *= _BASELINE_DRIFT
            self._window = 0
        return smoothed > LATENCY_TOLERANCE * self._best

    def _shrink(self, factor: float) -> None:
        if self._since_decrease >= self.limit:
            self.limit = max(1.0, self.limit * factor)
            self._since_decrease = 0


def backoff_s(attempt: int, base_s: float, retry_after: float | None) -> float:
    """Exponential backoff with full jitter; a server's Retry-After is a floor, capped at a minute."""
    jittered = random.uniform(0, min(BACKOFF_CAP_S, base_s * 2 ** (attempt - 1)))
    return min(RETRY_WAIT_CAP_S, max(retry_after or 0.0, jittered))
