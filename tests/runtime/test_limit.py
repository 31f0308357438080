"""The adaptive in-flight limit: AIMD on 429s and on latency, and a fair, exact queue of waiters."""

from __future__ import annotations

import asyncio
import random

import pytest

from aifuncs.runtime._limit import AdaptiveLimit


def test_a_steady_latency_keeps_the_limit_and_a_rising_one_shrinks_it_until_it_recovers() -> None:
    limit = AdaptiveLimit(32)
    for _ in range(200):
        limit.succeeded(0.05)
    assert limit.limit == 32
    for _ in range(200):  # the server queues: replies take 4x as long
        limit.succeeded(0.2)
    shrunk = limit.limit
    assert shrunk < 12
    for _ in range(2000):
        limit.succeeded(0.05)
    assert limit.limit > 2 * shrunk


def test_varied_reply_lengths_are_not_congestion() -> None:
    limit = AdaptiveLimit(16)
    lengths = random.Random(7)  # an LLM's replies take 0.1 to 2 s, depending on their length
    for _ in range(2000):
        limit.succeeded(lengths.uniform(0.1, 2.0))
    assert limit.limit >= 14


def test_429s_ease_the_limit_once_per_window_and_halve_it_when_they_are_half_of_it() -> None:
    limit = AdaptiveLimit(32)
    for _ in range(10):  # a burst of 429s from the requests already in flight: one event
        limit.throttled()
    assert limit.limit == 32 * 0.8
    for _ in range(30):  # a window later
        limit.succeeded()
    for _ in range(20):  # most of a window refused: far too many were sent
        limit.throttled()
    assert limit.limit < 16


def test_a_server_that_refuses_beyond_n_in_flight_keeps_the_limit_near_n() -> None:
    for n in (8, 20, 40):  # (below ~8, one request more or less is already 20%)
        limit = AdaptiveLimit(64)
        seen = []
        for _ in range(300):  # rounds: the client sends what its limit allows; beyond n come back 429
            sent = int(limit.limit)
            for i in range(sent):
                if i < n:
                    limit.succeeded(0.05)
                else:
                    limit.throttled()
            seen.append(limit.limit)
        settled = sum(seen[-100:]) / 100
        assert abs(settled - n) <= 0.2 * n, (n, settled)


def test_no_more_than_the_limit_run_at_once_and_cancelled_waiters_pass_their_turn() -> None:
    async def main() -> None:
        limit = AdaptiveLimit(3)
        running = peak = 0

        async def task(seconds: float) -> None:
            nonlocal running, peak
            async with limit:
                running += 1
                peak = max(peak, running)
                await asyncio.sleep(seconds)
                running -= 1

        tasks = [asyncio.create_task(task(0.01)) for _ in range(30)]
        await asyncio.sleep(0)
        for doomed in tasks[5:15]:  # waiting in the queue when cancelled
            doomed.cancel()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        assert peak == 3
        assert sum(isinstance(r, asyncio.CancelledError) for r in results) == 10
        assert limit.in_flight == 0 and not limit._waiters

    asyncio.run(main())


@pytest.mark.parametrize("maximum", [1, 4])
def test_slots_are_handed_over_in_arrival_order(maximum: int) -> None:
    async def main() -> list[int]:
        limit = AdaptiveLimit(maximum)
        order: list[int] = []

        async def task(number: int) -> None:
            async with limit:
                order.append(number)
                await asyncio.sleep(0.001)

        await asyncio.gather(*(task(i) for i in range(20)))
        return order

    assert asyncio.run(main()) == list(range(20))


def test_a_429_with_a_short_retry_after_refuses_one_request_and_keeps_the_window() -> None:
    limit = AdaptiveLimit(16)
    for _ in range(3):  # a few refusals among many answers: each request is retried after its wait
        limit.throttled(0.2)
        for _ in range(10):
            limit.succeeded(0.05)
    assert limit.limit == 16
    for _ in range(8):  # half a window refused: the server is overloaded after all
        limit.throttled(0.2)
    assert limit.limit < 16


def test_stalls_do_not_read_as_queueing_and_hedging_starts_after_enough_replies() -> None:
    limit = AdaptiveLimit(16)
    draws = random.Random(3)
    waits = []
    for _ in range(400):
        waits.append(limit.hedge_after_s())
        limit.succeeded(1.5 if draws.random() < 0.07 else 0.05)  # 7% of requests stall for 1.5 s
    assert limit.limit == 16
    assert all(w is None for w in waits[:20])  # too few replies to tell a stall from a slow reply
    assert waits[-1] is not None and 0.2 < waits[-1] < 0.5  # far sooner than a stall ends
    assert sum(limit.may_hedge() for _ in range(100)) == 41  # at most a tenth of the replies (and one)
