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


def test_429s_halve_the_limit_once_per_window() -> None:
    limit = AdaptiveLimit(32)
    for _ in range(10):  # one burst of 429s from the requests already in flight
        limit.throttled()
    assert limit.limit == 16
    for _ in range(20):  # a window later (the limit has grown to ~17)
        limit.succeeded()
    limit.throttled()
    assert limit.limit < 9


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
