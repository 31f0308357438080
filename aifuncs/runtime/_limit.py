"""Requests in flight per endpoint: a limit that shrinks when the server pushes back or slows down, and
creeps back up while it keeps pace."""

from __future__ import annotations

import asyncio
import random
from collections import deque
from types import TracebackType
from typing import Any

BACKOFF_CAP_S = 30.0
RETRY_WAIT_CAP_S = 60.0


# Latency: a request is "slow" when the smoothed latency exceeds this multiple of the best smoothed
# latency seen. Smoothing over ~20 requests keeps the varied lengths of LLM replies from reading as queueing.
LATENCY_TOLERANCE = 1.5
# ...and by at least this much: a few milliseconds more on a fast server is the client's own CPU or
# scheduling noise, not a queue at the server (read as one, it shrank the limit to 1 on a busy machine).
LATENCY_FLOOR_S = 0.02
_SMOOTHING = 0.05
_BASELINE_DRIFT = 1.01  # per window the best latency is forgotten a little, so a new workload can settle
# One reply far slower than the rest (a stall) is one request's trouble, not queueing: each latency counts
# for at most this multiple of the smoothed latency.
_OUTLIER_CAP = 3.0
# A 429 whose Retry-After is at most this refused one request; it is waited out without shrinking, unless
# 429s come back for more than a quarter of a window's requests (the server is overloaded after all).
SHORT_RETRY_AFTER_S = 1.0
_REFUSED_SHARE = 0.25
# Hedging: a request still unanswered after this multiple of the smoothed latency (and at least the
# smoothed latency plus the floor) is sent again; at most this share of requests is hedged.
HEDGE_MULTIPLE = 4.0
HEDGE_FLOOR_S = 0.2
HEDGE_SHARE = 0.1
_HEDGE_SAMPLES = 20  # latencies seen before hedging starts
# A request unanswered after this multiple of the smoothed latency (and at least the smoothed latency plus
# the floor) while the server answered a limit's worth of others is stalled: it gives its slot to the next
# request, so a stall idles no slot while it lasts (7% of requests stalling 1.5 s held every slot of a fast
# server). A server that answers nothing sets nothing aside; at most this multiple of the limit wait aside.
STALL_MULTIPLE = 4.0
STALL_FLOOR_S = 0.05
ASIDE_MULTIPLE = 16


class AdaptiveLimit:
    """AIMD, as TCP does: each success adds 1/limit, never above `maximum`; when the server says it is
    overloaded (a 429 without a short Retry-After, or many 429s) the limit eases off (see `throttled`);
    when latency climbs well above its best (the server is queueing our requests), it shrinks by a quarter. A failure of one request (a 500, a dropped connection, one 429 with
    a short Retry-After, a stall) is retried without shrinking.

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
        self._samples = 0
        self._refused = 0  # 429s with a short Retry-After in the current window...
        self._answered = 0  # ...and completions of any kind in it
        self._overloaded = 0  # 429s meaning overload since the limit last eased off
        self._hedged = 0
        self.aside = 0  # stalled requests still unanswered, no longer counted in `in_flight`
        self.ended = 0  # requests ended under `request()`, answered or failed
        # Waiters in arrival order, each woken alone when a slot frees: a Condition's notify_all woke
        # every waiter per completion, which with thousands queued cost O(n^2) (2 ms CPU a request).
        self._waiters: deque[asyncio.Future[None]] = deque()

    async def __aenter__(self) -> None:
        await self.acquire()

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._release()

    def request(self) -> Place:
        """A remote request's place: like `async with limit`, but set aside once it stalls."""
        return Place(self)

    async def acquire(self) -> None:
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

    def throttled(self, retry_after_s: float | None = None) -> None:
        """A 429. With a short Retry-After it refused this request alone (retried after that wait), unless
        such refusals are a large share of the window. Otherwise the server is overloaded: the limit eases
        off by a fifth, once per window, or by half when the 429s are half the window (far too many sent).
        Eased off gently, a server that refuses what exceeds its N requests in flight keeps the limit near
        N (halving would leave it swinging between N/2 and N)."""
        self._count_answer()
        if retry_after_s is not None and retry_after_s <= SHORT_RETRY_AFTER_S:
            self._refused += 1
            if self._refused <= max(1.0, _REFUSED_SHARE * self.limit):
                return
        if self._since_decrease >= self.limit:
            self.limit = max(1.0, self.limit * 0.8)
            self._since_decrease = 0
            self._overloaded = 1
            return
        self._overloaded += 1
        if self._overloaded >= 0.5 * self.limit:
            self.limit = max(1.0, self.limit * 0.5)
            self._overloaded = -(10**9)  # once in this window
            self._since_decrease = 0

    def succeeded(self, latency_s: float | None = None) -> None:
        """A request succeeded; pass its latency where rising latency means congestion (remote servers)."""
        self._since_decrease += 1
        self._count_answer()
        if latency_s is not None and self._slow(latency_s):
            self._shrink(0.75)
            return
        self.limit = min(float(self.maximum), self.limit + 1 / self.limit)
        self._wake()

    def hedge_after_s(self) -> float | None:
        """How long a request may go unanswered before it is sent again; None while too few latencies are
        known to tell a stall from a slow reply."""
        if self._latency is None or self._samples < _HEDGE_SAMPLES:
            return None
        return max(HEDGE_MULTIPLE * self._latency, self._latency + HEDGE_FLOOR_S)

    def stall_after_s(self) -> float | None:
        """How long a request may go unanswered before it counts as stalled; None while too few latencies
        are known."""
        if self._latency is None or self._samples < _HEDGE_SAMPLES:
            return None
        return max(STALL_MULTIPLE * self._latency, self._latency + STALL_FLOOR_S)

    def _set_aside(self, ended_before: int) -> bool:
        """Free a stalled request's slot for the next request, if the server answered others meanwhile (it is
        this request's stall, not the server's) and not too many are set aside already."""
        if self.ended - ended_before < self._slots() or self.aside >= ASIDE_MULTIPLE * self._slots():
            return False
        self.aside += 1
        self._release()
        return True

    def may_hedge(self) -> bool:
        """Whether one more request may be sent again (at most a tenth of the replies): counts it if so."""
        if self._hedged >= HEDGE_SHARE * self._samples + 1:
            return False
        self._hedged += 1
        return True

    def _count_answer(self) -> None:
        self._answered += 1
        if self._answered >= self.limit:
            self._answered = self._refused = 0

    def _slow(self, latency_s: float) -> bool:
        self._samples += 1
        if self._latency is not None:
            latency_s = min(latency_s, _OUTLIER_CAP * self._latency)
        smoothed = self._latency = (
            latency_s if self._latency is None else self._latency + _SMOOTHING * (latency_s - self._latency)
        )
        self._window += 1
        if self._best is None or smoothed < self._best:
            self._best = smoothed
        elif self._window >= self.limit:
            self._best *= _BASELINE_DRIFT
            self._window = 0
        return smoothed > LATENCY_TOLERANCE * self._best and smoothed - self._best > LATENCY_FLOOR_S

    def _shrink(self, factor: float) -> None:
        if self._since_decrease >= self.limit:
            self.limit = max(1.0, self.limit * factor)
            self._since_decrease = 0


class Place:
    """One request's slot from before it is sent until its reply; once the request stalls (see
    `AdaptiveLimit.stall_after_s`) the slot passes on and the request waits outside the count."""

    __slots__ = ("_limit", "_timer", "_aside", "_ended")

    def __init__(self, limit: AdaptiveLimit) -> None:
        self._limit = limit
        self._timer: asyncio.TimerHandle | None = None
        self._aside = False
        self._ended = 0

    async def __aenter__(self) -> None:
        limit = self._limit
        await limit.acquire()
        self._ended = limit.ended
        self._arm()

    async def __aexit__(self, *exc: Any) -> None:
        limit = self._limit
        limit.ended += 1
        if self._timer is not None:
            self._timer.cancel()
        if self._aside:
            limit.aside -= 1
        else:
            limit._release()

    @property
    def stalled(self) -> bool:
        """Whether the request was set aside as stalled."""
        return self._aside

    def _arm(self) -> None:
        delay = self._limit.stall_after_s()
        if delay is not None:  # a timer, not a task: this runs for every request
            self._timer = asyncio.get_running_loop().call_later(delay, self._stalled)

    def _stalled(self) -> None:
        self._timer = None
        self._aside = self._limit._set_aside(self._ended)
        if not self._aside:
            self._arm()  # looked at again after as long: the server may have answered others by then


class GatePlace:
    """A place under a bound on requests whose answers are not committed yet (an `asyncio.Semaphore`), held
    from before a request is sent until its answers are kept. While the request waits out a backoff nothing
    paid waits with it, so the place is given up and taken again before the retry: held through the wait, a
    third of the places sat idle at 35% faults."""

    __slots__ = ("_gate", "held")

    def __init__(self, gate: asyncio.Semaphore | None) -> None:
        self._gate = gate
        self.held = False

    async def take(self) -> None:
        if self._gate is not None and not self.held:
            await self._gate.acquire()
            self.held = True

    def give(self) -> None:
        if self._gate is not None and self.held:
            self.held = False
            self._gate.release()


def backoff_s(attempt: int, base_s: float, retry_after: float | None) -> float:
    """Exponential backoff with full jitter; a server's Retry-After is a floor, capped at a minute."""
    jittered = random.uniform(0, min(BACKOFF_CAP_S, base_s * 2 ** (attempt - 1)))
    return min(RETRY_WAIT_CAP_S, max(retry_after or 0.0, jittered))
