"""A coalesced batch that fails is paid for: concurrent single-row REST requests to an in-process model share
its calls; a batch holding a row the model rejects fails, and each of its requests is sent again alone. Each
request's usage row counts every model call that carried it, so the attempts add up to the rows the model
was handed."""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import httpx
import pyarrow as pa
import pytest

import aifuncs
from aifuncs.providers.base import CallOptions
from aifuncs.runtime._coalesce import Coalescer
from aifuncs.runtime._usage import UsageLog
from reliability.harness import served_fixture  # noqa: F401 - the `served` fixture

VALUES = [13.0 if i % 10 == 3 else i + 0.5 for i in range(40)]  # 13 fails any call it is in (4 of them)


def test_failed_batches_are_counted_in_their_requests_attempts(
    served: Callable[..., Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    aifuncs.endpoints.create("slow", kind="python", function="sample_models:slow_doubled", returns="DOUBLE",
                             max_concurrency=1)  # fmt: skip
    aifuncs.endpoints.update_permissions("slow", [{"user_name": "alice", "permission_level": "CAN_QUERY"}])
    calls = tmp_path / "calls.txt"  # the server's model calls, one line of rows each
    monkeypatch.setenv("SAMPLE_CALLS_FILE", str(calls))
    with served() as s:

        def ask(n: int) -> httpx.Response:
            return httpx.post(
                s.url + "/serving-endpoints/slow/invocations",
                json={"inputs": [VALUES[n]], "client_request_id": f"r{n}"},
                headers={"Authorization": f"Bearer {s.token}"},
                timeout=60,
            )

        with concurrent.futures.ThreadPoolExecutor(40) as pool:
            answers = list(pool.map(ask, range(40)))
    for value, answer in zip(VALUES, answers, strict=True):
        if value == 13.0:
            assert answer.status_code == 400 and "13 is unlucky" in answer.text, answer.text
        else:
            assert answer.status_code == 200 and answer.json() == {"predictions": [2 * value]}, answer.text
    sizes = [int(n) for n in calls.read_text().split()]
    assert max(sizes) > 1 and sum(sizes) > 40, sizes  # batched, and some batches failed and were resent
    rows = {r["client_request_id"]: r for r in UsageLog().read() if r["endpoint"] == "slow"}
    assert len(rows) == 40  # one row per request, whatever became of its batch
    assert sum(r["attempts"] for r in rows.values()) == sum(sizes), (rows, sizes)
    assert {rows[f"r{n}"]["status"] for n, v in enumerate(VALUES) if v == 13.0} == {"error"}
    assert sum(1 for r in rows.values() if r["attempts"] == 2) >= 2  # sent in a failed batch, then alone


def test_a_request_given_up_in_a_failed_batch_is_not_sent_again() -> None:
    """Nobody waits for it any more: a call of it alone would be paid with no row to count it."""
    sent: list[list[float]] = []
    resent: list[float] = []

    async def scenario() -> list[Any]:
        coalescer = Coalescer()
        head_in, head_go, batch_in, batch_go = (asyncio.Event() for _ in range(4))

        async def send(rows: pa.Array) -> pa.Array:
            sent.append(rows.to_pylist())
            if len(sent) == 1:  # the first call holds the model while the others queue
                head_in.set()
                await head_go.wait()
            elif len(rows) > 1:
                batch_in.set()
                await batch_go.wait()
                raise ValueError("a batch the model rejects")
            return rows

        def ask(value: float) -> asyncio.Task[Any]:
            return asyncio.ensure_future(
                coalescer.predict(
                    model,
                    CallOptions({}),
                    pa.array([value]),
                    send,
                    1,
                    64,
                    lambda: resent.append(value),
                )
            )

        model = cast(Any, object())  # only its identity keys the line
        head = ask(0.0)
        await head_in.wait()
        batch = [ask(v) for v in (1.0, 2.0, 3.0)]  # queued: they go together next
        head_go.set()
        await batch_in.wait()
        batch[1].cancel()  # its caller gives up while the batch is with the model
        await asyncio.wait([batch[1]])
        batch_go.set()
        return await asyncio.gather(head, *batch, return_exceptions=True)

    results = asyncio.run(scenario())
    assert isinstance(results[2], asyncio.CancelledError)
    assert [r.to_pylist() for i, r in enumerate(results) if i != 2] == [[0.0], [1.0], [3.0]]
    assert sent == [[0.0], [1.0, 2.0, 3.0], [1.0], [3.0]], sent  # 2.0 not sent alone: nobody would count it
    assert resent == [1.0, 3.0]
