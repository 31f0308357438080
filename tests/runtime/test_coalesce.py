"""Small concurrent requests to an in-process model share model calls; everything else stays per request."""

from __future__ import annotations

import concurrent.futures
from pathlib import Path

import pyarrow as pa
import pytest
import sample_models

import aifuncs
from aifuncs.errors import ModelError
from aifuncs.planner import bind_call
from aifuncs.runtime import default_runtime


def _requests(values: list[float]) -> list[concurrent.futures.Future[pa.Array]]:
    call = bind_call("ai_query", "slow", pa.float64())
    runtime = default_runtime()
    return [runtime.submit_call(call, pa.array([v], pa.float64())) for v in values]


def test_concurrent_single_row_requests_share_model_calls(home: Path) -> None:
    aifuncs.endpoints.create(
        "slow", kind="python", function="sample_models:slow_doubled", returns="DOUBLE", max_concurrency=1
    )
    sample_models.SLOW_CALLS.clear()
    futures = _requests([i + 0.5 for i in range(40)])
    answers = [f.result(timeout=30).to_pylist() for f in futures]
    assert answers == [[2 * i + 1.0] for i in range(40)]  # each request its own answer, in its own order
    assert sum(sample_models.SLOW_CALLS) == 40
    assert len(sample_models.SLOW_CALLS) <= 5, sample_models.SLOW_CALLS  # 40 calls alone take 0.8 s
    runtime = default_runtime()
    runtime.usage.flush()
    rows = [r for r in runtime.usage.read() if r["endpoint"] == "slow"]
    assert len(rows) == 40 and {r["rows"] for r in rows} == {1}  # one usage row per request


def test_a_failing_request_fails_alone(home: Path) -> None:
    aifuncs.endpoints.create(
        "slow", kind="python", function="sample_models:slow_doubled", returns="DOUBLE", max_concurrency=1
    )
    sample_models.SLOW_CALLS.clear()
    futures = _requests([1.0, 2.0, 3.0, 13.0, 5.0, 6.0, 7.0, 8.0])
    answers = {}
    for value, future in zip([1, 2, 3, 13, 5, 6, 7, 8], futures, strict=True):
        try:
            answers[value] = future.result(timeout=30).to_pylist()
        except ModelError as error:
            answers[value] = str(error)
    assert "13 is unlucky" in answers.pop(13)
    assert answers == {v: [2.0 * v] for v in (1, 2, 3, 5, 6, 7, 8)}
    assert max(sample_models.SLOW_CALLS) > 1  # they were batched, and the batch with 13 was split


def test_a_big_request_goes_alone(home: Path) -> None:
    aifuncs.endpoints.create("slow", kind="python", function="sample_models:slow_doubled", returns="DOUBLE")
    sample_models.SLOW_CALLS.clear()
    call = bind_call("ai_query", "slow", pa.float64())
    runtime = default_runtime()
    big = pa.array([i + 0.5 for i in range(2048)])
    futures = [runtime.submit_call(call, big) for _ in range(3)]
    for future in futures:
        assert future.result(timeout=30).to_pylist() == [2 * i + 1.0 for i in range(2048)]
    assert sample_models.SLOW_CALLS == [2048, 2048, 2048]


@pytest.mark.parametrize("rows", [1, 3])
def test_struct_requests_each_get_their_own_answers(home: Path, rows: int) -> None:
    aifuncs.endpoints.create("pair", kind="python", function="sample_models:doubled", returns="DOUBLE")
    pair = pa.struct([("a", pa.float64()), ("b", pa.float64())])
    call = bind_call("ai_query", "pair", pair)
    runtime = default_runtime()
    batches = [pa.array([{"a": float(i), "b": float(j)} for j in range(rows)], pair) for i in range(20)]
    futures = [runtime.submit_call(call, b) for b in batches]
    for i, future in enumerate(futures):
        assert future.result(timeout=30).to_pylist() == [2.0 * i + j for j in range(rows)]

