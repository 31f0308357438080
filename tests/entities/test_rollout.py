"""Config updates without downtime through a real `aifuncs serve` (model workers): the new version loads while
the old one serves (GET shows pending_config and IN_PROGRESS), then the switch; a model that cannot load leaves
the old version serving and the update UPDATE_FAILED with the reason; requests under constant load all succeed."""

from __future__ import annotations

import os
import sqlite3
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from servers import free_port, running

import aifuncs
import aifuncs.governance as gov

RECORDS = [
    {"alcohol": 13.2, "malic_acid": 1.78, "flavanoids": 2.76, "color_intensity": 4.38, "proline": 1050.0}
]


def register(mlflow_models: Any) -> None:
    """`rollout` versions 1 and 2 (the wine classifier, registered twice) and 3 (a model that cannot load)."""
    import mlflow
    from sample_models import FailsToLoad

    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(mlflow_models.tracking_uri)
    mlflow.set_registry_uri(mlflow_models.tracking_uri)
    try:
        source = mlflow.MlflowClient().get_model_version_download_uri("wine", "1")
        mlflow.register_model(source, "rollout")
        mlflow.register_model(source, "rollout")
        with mlflow.start_run():
            mlflow.pyfunc.log_model(
                name="broken", python_model=FailsToLoad(), registered_model_name="rollout"
            )
    finally:
        mlflow.set_tracking_uri(previous)


@pytest.fixture
def served(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mlflow_models: Any
) -> Iterator[tuple[str, dict[str, str]]]:
    register(mlflow_models)
    monkeypatch.delenv("AIFUNCS_TOKEN", raising=False)
    gov.create_user("ops", admin=True)
    headers = {"Authorization": f"Bearer {gov.create_token('ops')}"}
    # One row per model call: a query over a few thousand rows runs for seconds, across the switch
    aifuncs.endpoints.create("wine", kind="mlflow", model_uri="models:/rollout/1", max_batch_rows=1)
    port = free_port()
    env = {
        **os.environ,
        "PYTHONPATH": str(Path(__file__).parents[1]),
        "MLFLOW_TRACKING_URI": mlflow_models.tracking_uri,
    }
    env.pop("AIFUNCS_TOKEN", None)
    command = [sys.executable, "-m", "aifuncs.cli", "serve", "--port", str(port)]
    with running(command, f"http://127.0.0.1:{port}/health", tmp_path / "serve.log", env):
        yield f"http://127.0.0.1:{port}", headers


class _Clients:
    """Threads sending requests (`_run`) until the block ends."""

    threads = 2

    def __init__(self, url: str, headers: dict[str, str]) -> None:
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(url, headers)) for _ in range(self.threads)]

    def _run(self, url: str, headers: dict[str, str]) -> None:
        raise NotImplementedError

    def __enter__(self) -> Any:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=120)


class Load(_Clients):
    """Requests sent one after another from two threads until stopped: every status counted."""

    def __init__(self, url: str, headers: dict[str, str]) -> None:
        self.statuses: Counter[int] = Counter()
        super().__init__(url, headers)

    def _run(self, url: str, headers: dict[str, str]) -> None:
        with httpx.Client(headers=headers, timeout=120) as client:
            while not self._stop.is_set():
                reply = client.post(
                    url + "/serving-endpoints/wine/invocations", json={"dataframe_records": RECORDS}
                )
                self.statuses[reply.status_code] += 1
                if reply.status_code != 200 or reply.json() != {"predictions": [0]}:
                    self.failures.append(reply.text[:300])


QUERY_ROWS = 3000
QUERY = (
    "SELECT count(*), count(*) FILTER (WHERE p IS NULL OR p <> 0) FROM (SELECT ai_query('wine', struct_pack("
    "alcohol := 13.2 + i * 0, malic_acid := 1.78, flavanoids := 2.76, color_intensity := 4.38, proline := 1050.0),"
    f" returnType => 'BIGINT') AS p FROM range({QUERY_ROWS}) t(i))"
)


def finished(url: str, headers: dict[str, str], statement_id: str, timeout_s: float = 300) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        got = httpx.get(f"{url}/api/2.0/sql/statements/{statement_id}", headers=headers, timeout=30).json()
        if got["status"]["state"] not in ("PENDING", "RUNNING"):
            return got
        assert time.monotonic() < deadline, got
        time.sleep(0.2)


def endpoint(url: str, headers: dict[str, str]) -> dict[str, Any]:
    return httpx.get(url + "/api/2.0/serving-endpoints/wine", headers=headers, timeout=30).json()


def settled(url: str, headers: dict[str, str], timeout_s: float = 180) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while (got := endpoint(url, headers))["state"]["config_update"] == "IN_PROGRESS":
        assert time.monotonic() < deadline, got
        time.sleep(0.2)
    return got


def test_a_config_update_under_load_fails_no_request(served: tuple[str, dict[str, str]], home: Path) -> None:
    url, headers = served
    first = httpx.post(
        url + "/serving-endpoints/wine/invocations",
        json={"dataframe_records": RECORDS},
        headers=headers,
        timeout=120,
    )
    assert first.json() == {"predictions": [0]}
    with Load(url, headers) as load:
        while sum(load.statuses.values()) < 10:
            time.sleep(0.05)
        running = httpx.post(
            url + "/api/2.0/sql/statements",
            json={"statement": QUERY, "warehouse_id": "any", "wait_timeout": "0s"},
            headers=headers,
            timeout=60,
        ).json()
        assert running["status"]["state"] in ("PENDING", "RUNNING"), running
        put = httpx.put(
            url + "/api/2.0/serving-endpoints/wine/config",
            json={"served_entities": [{"entity_name": "rollout", "entity_version": "2"}]},
            headers=headers,
            timeout=60,
        )
        assert put.status_code == 200, put.text
        # The new version loads while the old serves
        assert put.json()["state"]["config_update"] == "IN_PROGRESS"
        assert (
            put.json()["config"]["config_version"] == 1
            and put.json()["pending_config"]["config_version"] == 2
        )
        done = settled(url, headers)
        assert done["state"]["config_update"] == "NOT_UPDATING" and done["config"]["config_version"] == 2
        assert "pending_config" not in done
        answered_before_failure = sum(load.statuses.values())
        statement = finished(url, headers, running["statement_id"])
        assert statement["status"]["state"] == "SUCCEEDED", statement["status"]
        assert statement["result"]["data_array"] == [[str(QUERY_ROWS), "0"]]  # every row answered: 0 failed
        # A version whose model cannot load: the update fails, version 2 goes on serving
        failing = httpx.put(
            url + "/api/2.0/serving-endpoints/wine/config",
            json={"served_entities": [{"entity_name": "rollout", "entity_version": "3"}]},
            headers=headers,
            timeout=60,
        )
        assert failing.status_code == 200 and failing.json()["state"]["config_update"] == "IN_PROGRESS"
        failed = settled(url, headers)
        assert failed["state"]["config_update"] == "UPDATE_FAILED", failed
        assert "weights are missing" in failed["pending_config"]["state_message"]
        assert failed["config"]["config_version"] == 2
        time.sleep(1.0)  # requests go on after the failure
    assert load.failures == [] and set(load.statuses) == {200}, (load.statuses, load.failures[:3])
    assert sum(load.statuses.values()) > answered_before_failure > 10
    assert aifuncs.endpoints.get("wine").version == 2
    aifuncs.runtime.default_runtime().usage.flush()
    with sqlite3.connect(home / "usage.db") as db:
        versions = dict(
            db.execute("SELECT endpoint_version, count(*) FROM usage WHERE status = 'ok' GROUP BY 1")
        )
    assert versions.get(1, 0) > 0 and versions.get(2, 0) > 0, versions  # both versions answered, none failed


LOAD_S = 6.0  # how long the slow model takes to load: what a request waiting for a cold load would take


def _parent(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except OSError:
        return None


class SpreadLoad(_Clients):
    """Requests from 4 threads, each on a new connection (so both server processes take some): for each, when it
    started, its latency, status and the model worker that answered."""

    threads = 4

    def __init__(self, url: str, headers: dict[str, str]) -> None:
        self.answers: list[tuple[float, float, int, int | None]] = []
        super().__init__(url, headers)

    def _run(self, url: str, headers: dict[str, str]) -> None:
        while not self._stop.is_set():
            began = time.monotonic()
            with httpx.Client(headers=headers, timeout=120) as client:
                reply = client.post(url + "/serving-endpoints/slow/invocations", json={"inputs": [[1.0]]})
            worker = reply.json()["predictions"][0] if reply.status_code == 200 else None
            self.answers.append((began, time.monotonic() - began, reply.status_code, worker))
            if reply.status_code != 200:
                self.failures.append(reply.text[:300])

    def servers(self, since: float = 0.0) -> set[int | None]:
        """The server processes whose workers answered requests started after `since`."""
        return {
            _parent(w) for began, _, status, w in list(self.answers) if status == 200 and began >= since and w
        }


def until(condition: Any, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "the condition did not hold in time"
        time.sleep(0.1)


def test_every_server_process_loads_the_new_config_before_the_switch(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mlflow_models: Any
) -> None:
    """`aifuncs serve --workers 2` under load spread over both processes: a config update fails no request,
    and no request waits for a cold load after it (each process loaded the new version before the switch)."""
    import mlflow
    from workers.slow_load_models import SlowToLoad

    mlflow.set_tracking_uri(mlflow_models.tracking_uri)
    mlflow.set_registry_uri(mlflow_models.tracking_uri)
    for _ in range(2):
        with mlflow.start_run():
            mlflow.pyfunc.log_model(name="slow", python_model=SlowToLoad(), registered_model_name="slowload")
    monkeypatch.delenv("AIFUNCS_TOKEN", raising=False)
    gov.create_user("ops", admin=True)
    headers = {"Authorization": f"Bearer {gov.create_token('ops')}"}
    aifuncs.endpoints.create("slow", kind="mlflow", model_uri="models:/slowload/1")
    port, url = free_port(), ""
    url = f"http://127.0.0.1:{port}"
    tests = Path(__file__).parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tests), str(tests / "workers")]),
           "MLFLOW_TRACKING_URI": mlflow_models.tracking_uri, "SLOW_LOAD_S": str(LOAD_S)}  # fmt: skip
    env.pop("AIFUNCS_TOKEN", None)
    command = [sys.executable, "-m", "aifuncs.cli", "serve", "--port", str(port), "--workers", "2"]
    with running(command, f"{url}/health", tmp_path / "serve.log", env), SpreadLoad(url, headers) as load:
        until(lambda: len(load.servers()) == 2, timeout_s=180)  # both processes have loaded version 1
        warm = time.monotonic()
        until(lambda: len(load.servers(warm)) == 2)
        old_workers = {w for _, _, status, w in list(load.answers) if status == 200}
        put = httpx.put(url + "/api/2.0/serving-endpoints/slow/config", headers=headers, timeout=60,
                        json={"served_entities": [{"entity_name": "slowload", "entity_version": "2"}]})  # fmt: skip
        assert put.status_code == 200 and put.json()["state"]["config_update"] == "IN_PROGRESS", put.text
        deadline = time.monotonic() + 180
        while (got := httpx.get(url + "/api/2.0/serving-endpoints/slow", headers=headers, timeout=30).json())[
            "state"
        ]["config_update"] == "IN_PROGRESS":
            assert time.monotonic() < deadline, got
            time.sleep(0.2)
        assert got["config"]["config_version"] == 2, got
        switched = time.monotonic()

        def both_switched() -> bool:  # each process answers from version 2's workers
            new = [w for began, _, status, w in list(load.answers) if began >= switched + 1.5 and status == 200
                   and w not in old_workers]  # fmt: skip
            return len({_parent(w) for w in new if w}) == 2

        until(both_switched, timeout_s=60)
        time.sleep(1.0)
        slowest = max(a[1] for a in list(load.answers) if a[0] >= warm)
        assert slowest < LOAD_S, f"a request waited {slowest:.1f} s: a cold load after the switch"
        # Each process reported its load of version 2 before the switch
        with sqlite3.connect(home / "catalog.db") as db:
            assert db.execute("SELECT count(*) FROM serving_processes").fetchone() == (2,)
            loads = db.execute("SELECT state FROM config_loads WHERE name = 'slow'").fetchall()
            assert loads == [("READY",), ("READY",)]
            assert db.execute("SELECT count(*) FROM pending_configs").fetchone() == (0,)
    answers = [a for a in load.answers if a[0] >= warm]
    assert load.failures == [] and {a[2] for a in answers} == {200}, load.failures[:3]
    assert len(answers) > 20
