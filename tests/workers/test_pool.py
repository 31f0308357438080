"""Worker pools with real worker processes: answers as in-process, a killed or hung worker replaced with its
batch retried once, a model that cannot load, scaling up, down and to zero."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from aifuncs._endpoint import Endpoint
from aifuncs.errors import RemoteError
from aifuncs.providers import provider_class
from aifuncs.providers.base import CallOptions
from aifuncs.workers import ModelWorkers, Pool

HERE = Path(__file__).parent


@pytest.fixture(autouse=True)
def importable(monkeypatch: pytest.MonkeyPatch) -> None:
    """Worker processes import the test models by name."""
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(HERE), str(HERE.parent)]))


def python_endpoint(name: str, function: str, **options: Any) -> Endpoint:
    return Endpoint(name, "python", {"function": function, "returns": "DOUBLE", **options})


async def until(condition: Callable[[], bool], timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "the condition did not hold in time"
        await asyncio.sleep(0.05)


def values(output: Any) -> list[Any]:
    return np.asarray(output).tolist()


def run(test: Callable[[ModelWorkers], Awaitable[None]]) -> None:
    async def main() -> None:
        workers = ModelWorkers()
        try:
            await test(workers)
        finally:
            await workers.close()

    asyncio.run(main())


def test_answers_as_the_model_in_process_would(mlflow_models: Any) -> None:
    """The same output crosses the process boundary: NumPy from a function, a frame of two columns (a struct
    per row) from an MLflow pyfunc, token counts not invented."""
    custom = Endpoint(
        "custom",
        "mlflow",
        {"model_uri": mlflow_models.custom_uri, "tracking_uri": mlflow_models.tracking_uri},
    )
    rows = pa.StructArray.from_arrays([pa.array([1.0, 20.0]), pa.array([2.0, 3.0])], names=["x", "y"])

    async def test(workers: ModelWorkers) -> None:
        doubled = workers.provider(python_endpoint("doubled", "sample_models:doubled"))
        out = await doubled.predict(pa.array([1.5, 4.0]), CallOptions())
        assert list(out) == [3.0, 8.0]
        pooled = await workers.provider(custom).predict(rows, CallOptions())
        direct = await provider_class("mlflow")(custom).predict(rows, CallOptions())
        assert pooled.to_pylist() == pa.Table.from_pandas(direct, preserve_index=False).to_pylist()
        assert workers.states()["custom"]["state"] == "READY"

    run(test)


def test_a_model_error_is_the_batch_s_and_the_worker_stays() -> None:
    async def test(workers: ModelWorkers) -> None:
        provider = workers.provider(python_endpoint("unlucky", "sample_models:fails_on_13"))
        with pytest.raises(ValueError, match="13 is unlucky"):
            await provider.predict(pa.array([13]), CallOptions())
        assert values(await provider.predict(pa.array([1]), CallOptions())) == [10.0]
        assert workers.states()["unlucky"]["restarts"] == 0

    run(test)


def test_a_killed_worker_is_replaced_and_its_batch_answered() -> None:
    async def test(workers: ModelWorkers) -> None:
        provider = workers.provider(python_endpoint("slow", "worker_models:slow"))
        pool = workers.pool(provider.endpoint)
        assert values(await provider.predict(pa.array([1.0]), CallOptions())) == [2.0]
        [first] = pool.pids()
        answers = [
            asyncio.ensure_future(provider.predict(pa.array([float(i)]), CallOptions())) for i in range(6)
        ]
        await until(lambda: pool.state()["busy"] == 1)
        os.kill(first, signal.SIGKILL)
        done = await asyncio.gather(*answers)
        assert [values(a) for a in done] == [[2.0 * i] for i in range(6)]
        state = pool.state()
        assert state["restarts"] == 1 and state["retried"] == 1 and state["workers"] == 1
        assert first not in pool.pids()

    run(test)


def test_a_hung_worker_is_killed_its_batch_retried_once_then_failed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HANG_MARKER", str(tmp_path / "hung"))

    async def test(workers: ModelWorkers) -> None:
        once = workers.provider(python_endpoint("once", "worker_models:hangs_once", worker_timeout_s=1))
        assert values(await once.predict(pa.array([2.0]), CallOptions())) == [
            4.0
        ]  # the second worker answered
        assert workers.states()["once"]["restarts"] == 1
        always = workers.provider(python_endpoint("always", "worker_models:hangs", worker_timeout_s=1))
        with pytest.raises(
            RemoteError, match=r"Endpoint 'always'.*worker_timeout_s \(1 s\).*tried twice"
        ) as failed:
            await always.predict(pa.array([2.0]), CallOptions())
        assert failed.value.status == 503 and failed.value.retryable
        await until(lambda: workers.states()["always"]["workers"] == 1)  # replaced again, ready for the next

    run(test)


def test_a_model_that_cannot_load_is_not_ready_and_says_why() -> None:
    async def test(workers: ModelWorkers) -> None:
        broken = python_endpoint("broken", "broken_model:predict")
        await workers.start([broken, python_endpoint("fine", "sample_models:doubled")])
        assert workers.health()[0] == 503  # both still loading
        await until(lambda: workers.health()[0] == 200)
        status, body = workers.health()
        assert body["endpoints"] == {"broken": "LOAD_FAILED", "fine": "READY"}
        assert body["not_ready"] == ["broken"]
        assert "corrupt" not in str(body)  # an open route: no reasons
        with pytest.raises(
            RemoteError, match=r"'broken' is not ready.*RuntimeError: the weights file is corrupt"
        ) as error:
            await workers.provider(broken).predict(pa.array([1.0]), CallOptions())
        assert error.value.status == 503 and error.value.retry_after
        fine = workers.provider(python_endpoint("fine", "sample_models:doubled"))
        assert values(await fine.predict(pa.array([1.0]), CallOptions())) == [2.0]

    run(test)


def test_the_pool_grows_with_waiting_batches_and_shrinks_when_idle() -> None:
    async def test(workers: ModelWorkers) -> None:
        endpoint = python_endpoint("pids", "worker_models:pid", workload_size="Medium", idle_s=1)
        provider = workers.provider(endpoint)
        pool = workers.pool(endpoint)
        assert pool.most == min(4, os.cpu_count() or 1)
        await provider.predict(pa.array([1.0]), CallOptions())
        assert pool.state()["workers"] == 1
        if pool.most < 2:
            pytest.skip("one core: one worker at most")
        slow = workers.provider(
            python_endpoint("slow", "worker_models:slow", workload_size="Medium", idle_s=1)
        )
        slow_pool = workers.pool(slow.endpoint)
        await slow.predict(pa.array([1.0]), CallOptions())
        seen: set[int] = set()
        deadline = time.monotonic() + 60
        while slow_pool.state()["workers"] < 2:  # 4 at a time keep batches waiting
            assert time.monotonic() < deadline
            await asyncio.gather(*(slow.predict(pa.array([1.0]), CallOptions()) for _ in range(4)))
            seen.update(slow_pool.pids())
        seen.update(slow_pool.pids())  # grown before the loop looked (a loaded machine): both are there now
        await until(lambda: slow_pool.state()["workers"] == 1, timeout_s=30)  # idle 1 s: back to the floor
        assert len(seen) >= 2

    run(test)


def test_scale_to_zero_releases_every_worker_and_the_next_request_cold_starts() -> None:
    async def test(workers: ModelWorkers) -> None:
        endpoint = python_endpoint("zero", "worker_models:pid", scale_to_zero_enabled=True, idle_s=0.5)
        provider = workers.provider(endpoint)
        pool = workers.pool(endpoint)
        [first] = values(await provider.predict(pa.array([1.0]), CallOptions()))
        await until(lambda: pool.state()["state"] == "SCALED_TO_ZERO")
        assert pool.pids() == [] and pool.state()["workers"] == 0
        await until(lambda: not _alive(first))
        [second] = values(await provider.predict(pa.array([1.0]), CallOptions()))
        assert second != first
        state = pool.state()
        assert state["state"] == "READY" and state["cold_start_s"] is not None and state["cold_start_s"] > 0

    run(test)


def _alive(pid: int) -> bool:
    return Path(f"/proc/{pid}").exists() and "zombie" not in Path(f"/proc/{pid}/status").read_text().lower()


def test_pool_floor_and_size_follow_the_options() -> None:
    options = provider_class("python").Options.model_validate(
        {"function": "m:f", "workload_size": "Large", "min_workers": 2}
    )
    pool = Pool(python_endpoint("sized", "m:f"), options)
    assert pool.most == min(16, os.cpu_count() or 1)
    assert pool.floor == min(2, pool.most)
    zero = provider_class("python").Options.model_validate({"function": "m:f", "scale_to_zero_enabled": True})
    assert Pool(python_endpoint("z", "m:f"), zero).floor == 0


def test_a_module_the_server_imports_from_its_own_path_imports_in_the_workers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "only_on_sys_path.py").write_text(
        "def tripled(values):\n    return (values * 3).to_numpy()\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))  # on sys.path only, not on PYTHONPATH

    async def test(workers: ModelWorkers) -> None:
        provider = workers.provider(python_endpoint("tripler", "only_on_sys_path:tripled"))
        assert values(await provider.predict(pa.array([1.0, 2.0]), CallOptions())) == [3.0, 6.0]

    run(test)
