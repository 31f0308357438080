"""Throughput under faults: a failing or stalled request costs its own row time, not the endpoint's slots."""

from __future__ import annotations

import json
import time

import duckdb
from servers import FakeServer, Faults

import aifuncs
from aifuncs.runtime._limit import AdaptiveLimit


def test_a_few_milliseconds_of_client_side_jitter_is_not_queueing() -> None:
    limit = AdaptiveLimit(16)
    for _ in range(50):  # the first replies of a fast server, while few requests are in flight
        limit.succeeded(0.002)
    lowest = limit.limit
    for _ in range(2000):  # 16 in flight on a busy client: each reply waits its turn on the event loop
        limit.succeeded(0.02)
        lowest = min(lowest, limit.limit)
    assert lowest == 16  # it read as a queue at the server and shrank the limit to 1 for a while


def test_stalled_requests_give_their_slots_to_the_next_requests(con: duckdb.DuckDBPyConnection) -> None:
    # Sampled chat (no temperature): a stalled request may not be hedged, so it waits the stall out.
    faults = Faults(slow=0.08, slow_s=4.0, first_attempts_only=True, seed=11)
    with FakeServer(faults=faults) as server:
        aifuncs.endpoints.create(
            "llm", kind="openai", model="m", base_url=server.url + "/v1", max_concurrency=2
        )
        started = time.monotonic()
        rows = aifuncs.sql(
            con, "SELECT i, ai_query('llm', 'item ' || i) FROM range(150) t(i) ORDER BY i"
        ).fetchall()
        elapsed = time.monotonic() - started
        stats = server.stats
    assert rows == [(i, f"echo: item {i}") for i in range(150)]
    stalls = stats.faults["slow"]
    assert stalls >= 6 and stats.requests == 150  # no request sent twice: each row asked once
    # Held, each stall kept one of the 2 slots for 4 s: at least stalls x 4 s / 2 in all.
    assert elapsed < stalls * 4.0 / 2 - 2.0, (elapsed, stalls)
    assert stats.max_in_flight > 2  # stalled ones waited beside the endpoint's 2


def test_a_request_waiting_out_retry_after_holds_no_place(con: duckdb.DuckDBPyConnection) -> None:
    # Temperature 0: answers are kept, so each request holds a place until its answer is committed
    # (twice max_concurrency places). The first two get a 429 with a 2 s Retry-After.
    faults = Faults(fail_first=2, fail_status=429, retry_after="2")
    with FakeServer(faults=faults, keep_bodies=True) as server:
        aifuncs.endpoints.create(
            "llm", kind="openai", model="m", base_url=server.url + "/v1", max_concurrency=1
        )
        rows = aifuncs.sql(
            con,
            "SELECT i, ai_query('llm', 'item ' || i, modelParameters => {'temperature': 0})"
            " FROM range(30) t(i) ORDER BY i",
        ).fetchall()
        bodies = [json.dumps(b, sort_keys=True) for b in server.stats.bodies]
    assert rows == [(i, f"echo: item {i}") for i in range(30)]
    assert len(bodies) == 32 and len(set(bodies)) == 30  # 30 rows, 2 of them sent twice
    refused = bodies[:2]
    retried_at = sorted(i for i, b in enumerate(bodies) if b in refused and i >= 2)
    # Each waited its own Retry-After, and meanwhile the other 28 rows went: held through the wait,
    # their places stalled every other row for 2 s and the retries came third and fourth.
    assert retried_at == [30, 31], retried_at
