"""The server under concurrent load and trouble: single-row requests batched to the model yet each admitted,
logged and answered on its own; a dead provider, a stalled client, and a stop with a request in flight."""

from __future__ import annotations

import concurrent.futures
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from servers import free_port, running

import aifuncs
import aifuncs.governance as gov


def _serve(**env: str) -> tuple[list[str], str, dict[str, str]]:
    port = free_port()
    full = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1]), **env}
    return [sys.executable, "-m", "aifuncs.cli", "serve", "--port", str(port)], f"http://127.0.0.1:{port}", full


def test_concurrent_single_rows_share_model_calls_but_not_their_accounting(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AIFUNCS_TOKEN", raising=False)
    aifuncs.endpoints.create("slow", kind="python", function="sample_models:slow_doubled", returns="DOUBLE",
                             max_concurrency=1)  # fmt: skip
    aifuncs.endpoints.put_ai_gateway("slow", {
        "rate_limits": [{"calls": 60, "burst": 24, "key": "user"}],  # 24 at once, then one a second
        "inference_table_config": {"enabled": True},
    })  # fmt: skip
    gov.create_user("alice")
    aifuncs.endpoints.update_permissions("slow", [{"user_name": "alice", "permission_level": "CAN_QUERY"}])
    headers = {"Authorization": f"Bearer {gov.create_token('alice')}"}
    calls = tmp_path / "calls.txt"
    command, url, env = _serve(SAMPLE_CALLS_FILE=str(calls))
    with running(command, url + "/health", tmp_path / "serve.log", env), httpx.Client(base_url=url) as client:

        def ask(value: float) -> httpx.Response:
            return client.post("/serving-endpoints/slow/invocations", headers=headers, json={"inputs": [value]})

        with concurrent.futures.ThreadPoolExecutor(32) as pool:
            answers = list(pool.map(ask, [i + 0.5 for i in range(32)]))
    ok = [(i, a) for i, a in enumerate(answers) if a.status_code == 200]
    refused = [a for a in answers if a.status_code == 429]
    assert len(ok) + len(refused) == 32 and 24 <= len(ok) <= 26, [a.status_code for a in answers]
    assert all(a.json() == {"predictions": [2 * i + 1.0]} for i, a in ok)  # each its own answer
    sizes = [int(n) for n in calls.read_text().split()]
    assert sum(sizes) == len(ok) and len(sizes) < len(ok), sizes  # fewer model calls than requests
    with sqlite3.connect(home / "usage.db") as db:  # the server wrote its rows as it stopped
        usage = db.execute("SELECT rows FROM usage WHERE endpoint = 'slow' AND status = 'ok'").fetchall()
    assert len(usage) == len(ok) and {r[0] for r in usage} == {1}  # one usage row per request
    with sqlite3.connect(home / "payloads.db") as db:
        logged = dict(db.execute("SELECT status_code, count(*) FROM payloads GROUP BY status_code").fetchall())
    assert logged.get(200) == len(ok)  # and one inference-table row


def test_a_dead_provider_a_stalled_client_and_a_stop_mid_request(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AIFUNCS_TOKEN", raising=False)
    aifuncs.endpoints.create("gone", kind="openai", model="m", base_url=f"http://127.0.0.1:{free_port()}/v1",
                             max_retries=0)  # fmt: skip
    aifuncs.endpoints.create("sleepy", kind="python", function="sample_models:sleepy", returns="DOUBLE")
    gov.create_user("ops", admin=True)
    headers = {"Authorization": f"Bearer {gov.create_token('ops')}"}
    command, url, env = _serve()
    log = open(tmp_path / "serve.log", "w")  # noqa: SIM115 - closed below
    process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while not _answers(url + "/health"):
            assert time.monotonic() < deadline and process.poll() is None, (tmp_path / "serve.log").read_text()
            time.sleep(0.3)
        with httpx.Client(base_url=url, timeout=30) as client:
            dead = client.post("/serving-endpoints/chat/completions", headers=headers,
                               json={"model": "gone", "messages": [{"role": "user", "content": "hi"}]})  # fmt: skip
            # no upstream to answer: a passing failure every client retries (503 with Retry-After), not a 400
            assert dead.status_code == 503 and "gone" in dead.json()["message"], dead.text
            assert dead.headers["retry-after"] == "1"
            port = int(url.rsplit(":", 1)[1])
            with socket.create_connection(("127.0.0.1", port)) as stalled:  # a body that never comes
                stalled.sendall(b"POST /serving-endpoints/sleepy/invocations HTTP/1.1\r\nHost: x\r\n"
                                b"Content-Length: 1000\r\n\r\n{\"inputs\"")  # fmt: skip
                assert client.get("/health").status_code == 200  # others are served meanwhile
            with concurrent.futures.ThreadPoolExecutor(1) as pool:
                in_flight = pool.submit(
                    client.post, "/serving-endpoints/sleepy/invocations", headers=headers, json={"inputs": [2.0]}
                )
                time.sleep(0.4)  # the request has reached the model
                os.killpg(process.pid, signal.SIGTERM)
                answer = in_flight.result(timeout=30)
            assert answer.status_code == 200 and answer.json() == {"predictions": [4.0]}  # finished, then stopped
            assert process.wait(timeout=30) is not None
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        log.close()


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.TransportError:
        return False
