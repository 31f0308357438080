"""The shared database's faults against a real `aifuncs serve`: PostgreSQL stopped and started again while a
bounded load runs. Requests meanwhile are refused with 503 and Retry-After (never a 500, never answered without
the limiter's admission); usage and inference rows buffered while it was away are written when it returns, none
lost, none twice. A database unreachable at start is one line naming it without its password."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import psycopg
import pytest
from pg import Cluster
from servers import FakeServer, free_port, running

import aifuncs
import aifuncs.governance as gov

MESSAGE = {"messages": [{"role": "user", "content": "hi"}]}
RATE, BURST = 600, 10  # calls per minute: the load below asks for far more, so the limiter decides


def _serve(home: Path, url: str, log: Path, port: int) -> object:
    env = {**os.environ, "AIFUNCS_HOME": str(home), "PYTHONPATH": str(Path(__file__).parents[1])}
    env.pop("AIFUNCS_TOKEN", None)
    env.pop("AIFUNCS_DATABASE_URL", None)
    command = [sys.executable, "-m", "aifuncs.cli", "serve", "--port", str(port), "--database-url", url]
    return running(command, f"http://127.0.0.1:{port}/health", log, env)


def _wait_for(condition: object, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


def test_a_database_restart_under_load_loses_and_doubles_nothing(
    pg_cluster: Cluster, pg_url: str, home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AIFUNCS_DATABASE_URL", pg_url)
    monkeypatch.delenv("AIFUNCS_TOKEN", raising=False)
    gov.create_user("alice")
    alice = gov.create_token("alice")
    log = tmp_path / "serve.log"
    with FakeServer() as upstream:
        aifuncs.endpoints.create("llm", kind="openai", model="m", base_url=upstream.url + "/v1")
        aifuncs.endpoints.update_permissions("llm", [{"user_name": "alice", "permission_level": "CAN_QUERY"}])
        aifuncs.endpoints.put_ai_gateway(
            "llm",
            {"rate_limits": [{"calls": RATE, "key": "endpoint", "burst": BURST}],
             "inference_table_config": {"enabled": True}},
        )  # fmt: skip
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        answers: list[tuple[float, float, int, str | None]] = []  # (sent, answered, status, Retry-After)
        lock = threading.Lock()
        stop = threading.Event()
        with _serve(home, pg_url, log, port):  # type: ignore[attr-defined]

            def client() -> None:
                with httpx.Client(timeout=60, headers={"Authorization": f"Bearer {alice}"}) as http:
                    while not stop.is_set():
                        sent = time.monotonic()
                        reply = http.post(base + "/serving-endpoints/llm/invocations", json=MESSAGE)
                        with lock:
                            answers.append((sent, time.monotonic(), reply.status_code,
                                            reply.headers.get("Retry-After")))  # fmt: skip

            clients = [threading.Thread(target=client) for _ in range(4)]
            for thread in clients:
                thread.start()
            _wait_for(lambda: sum(a[2] == 200 for a in answers) >= 20, 60, "no answers before the restart")
            down = time.monotonic()
            pg_cluster.stop()
            time.sleep(1.5)  # the outage itself: how long the database stays away
            pg_cluster.start()
            up = time.monotonic()
            _wait_for(
                lambda: sum(a[2] == 200 and a[0] > up + 0.5 for a in answers) >= 20,
                60,
                "the server did not recover after the database came back",
            )
            stop.set()
            for thread in clients:
                thread.join(timeout=120)
            served = upstream.settled().requests
        statuses = Counter(a[2] for a in answers)
        admitted = [a for a in answers if a[2] == 200]

        # only admissions, refusals and the outage's 503s, each 503 with a Retry-After
        assert set(statuses) <= {200, 429, 503}, statuses
        assert statuses[503] > 0, f"the outage was not felt: {statuses}"
        assert all(a[3] is not None and int(a[3]) >= 1 for a in answers if a[2] in (429, 503))
        # no answer without admission: within GCRA's bound for the whole run, outage included
        span = max(a[1] for a in admitted) - min(a[0] for a in admitted)
        assert len(admitted) <= BURST + RATE / 60 * (span + 0.25) + 1e-6, (len(admitted), span)
        assert served == len(admitted), (served, statuses)  # the upstream saw exactly what was answered
        during = [a for a in admitted if down < a[0] and a[1] < up]
        assert len(during) <= BURST, during  # while it was away only room leased before could admit

        # every answer's usage and inference row, written once the database returned: none lost, none twice
        def rows() -> list[tuple[str, str, int]]:
            with psycopg.connect(pg_url) as conn:
                return conn.execute("SELECT request_id, status, status_code FROM usage").fetchall()

        _wait_for(lambda: len(rows()) >= len(admitted), 30, "usage rows were lost")
        usage = rows()
        assert len({r[0] for r in usage}) == len(usage)  # none twice
        assert sum(r[1] == "ok" for r in usage) == len(admitted), (Counter(r[1] for r in usage), statuses)
        with psycopg.connect(pg_url) as conn:
            payloads = conn.execute("SELECT request_id, status_code FROM payloads").fetchall()
        assert len({p[0] for p in payloads}) == len(payloads)
        assert sum(p[1] == 200 for p in payloads) == len(admitted)
    text = log.read_text()
    assert pg_cluster.password not in text and "Traceback" not in text


def test_a_database_unreachable_at_start_is_named_without_its_password(
    pg_cluster: Cluster, tmp_path: Path
) -> None:
    dead = f"postgresql://someone:hunter2secret@127.0.0.1:{free_port()}/x"
    done = subprocess.run(
        [sys.executable, "-m", "aifuncs.cli", "serve", "--port", str(free_port()), "--database-url", dead],
        capture_output=True, text=True, timeout=120,
        env={"PATH": "/usr/bin:/bin", "AIFUNCS_HOME": str(tmp_path / "h")},
    )  # fmt: skip
    assert done.returncode != 0
    out = done.stdout + done.stderr
    assert "hunter2secret" not in out and "Traceback" not in out
    assert "Cannot use the database postgresql://someone:***@127.0.0.1" in done.stderr
    assert not any(
        "hunter2secret" in p.read_text(errors="replace") for p in tmp_path.rglob("*") if p.is_file()
    )
