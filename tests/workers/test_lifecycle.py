"""Model worker processes live no longer than what they serve: a server killed outright (SIGKILL, out of memory)
leaves no worker behind, even one inside a model that never returns, and an endpoint deleted or replaced releases
its workers."""

from __future__ import annotations

import concurrent.futures
import os
import signal
import time
from pathlib import Path

import httpx
import pytest

import aifuncs
import aifuncs.governance as gov

from .test_serve import serving, until, worker_pids


def _alive(pid: int) -> bool:
    """Whether the process runs (a zombie waiting for its parent's wait counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.fixture
def headers(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    monkeypatch.delenv("AIFUNCS_TOKEN", raising=False)
    monkeypatch.delenv("AIFUNCS_SERVE_MODEL_WORKERS", raising=False)
    gov.create_user("ops", admin=True)
    return {"Authorization": f"Bearer {gov.create_token('ops')}"}


def test_a_server_killed_outright_leaves_no_worker_behind(tmp_path: Path, headers: dict[str, str]) -> None:
    # One worker inside a model that never returns, one idle: neither may outlive its server.
    aifuncs.endpoints.create("stuck", kind="python", function="worker_models:hangs", returns="DOUBLE",
                             worker_timeout_s=3600)  # fmt: skip
    aifuncs.endpoints.create("idle", kind="python", function="sample_models:doubled", returns="DOUBLE")
    with serving(tmp_path) as (url, server):
        until(lambda: httpx.get(url + "/health").status_code == 200)
        workers = until(lambda: len(pids := worker_pids(server.pid)) == 2 and pids)
        with concurrent.futures.ThreadPoolExecutor(1) as client:
            client.submit(
                httpx.post, url + "/serving-endpoints/stuck/invocations", json={"inputs": [1.0]},
                headers=headers, timeout=60,
            )  # fmt: skip
            until(lambda: httpx.get(url + "/health").json()["endpoints"]["stuck"] == "READY")
            time.sleep(0.5)  # the request reaches the model (nothing to wait on: the model just sleeps)
            os.kill(server.pid, signal.SIGKILL)
            server.wait(timeout=30)
        until(lambda: not any(_alive(pid) for pid in workers), timeout_s=20)


def test_deleted_and_replaced_endpoints_release_their_workers_and_current_ones_keep_theirs(
    tmp_path: Path, headers: dict[str, str]
) -> None:
    for name in ("gone", "replaced", "kept"):
        aifuncs.endpoints.create(
            name, kind="python", function="worker_models:pid", returns="BIGINT", idle_s=1
        )
    with serving(tmp_path) as (url, server):
        until(lambda: httpx.get(url + "/health").status_code == 200)

        def ask(name: str) -> int:
            answer = httpx.post(url + f"/serving-endpoints/{name}/invocations", json={"inputs": [1.0]},
                                headers=headers, timeout=60)  # fmt: skip
            assert answer.status_code == 200, answer.text
            [pid] = answer.json()["predictions"]
            return int(pid)

        pids = {name: ask(name) for name in ("gone", "replaced", "kept")}
        assert sorted(worker_pids(server.pid)) == sorted(pids.values())  # one worker each, made at the start
        assert httpx.delete(url + "/api/2.0/serving-endpoints/gone", headers=headers).status_code == 200
        # replaced from outside this server (the CLI, Python on the same home): only the catalog says so
        aifuncs.endpoints.update("replaced", function="worker_models:pid", returns="BIGINT", idle_s=2)
        until(lambda: not _alive(pids["gone"]) and not _alive(pids["replaced"]), timeout_s=30)
        assert sorted(httpx.get(url + "/health").json()["endpoints"]) == ["kept"]
        # the current endpoint's worker stayed through all that (its pool was not taken for a released one)
        assert ask("kept") == pids["kept"] and _alive(pids["kept"])
        assert pids["replaced"] != ask("replaced")  # the new version answers from a worker of its own
