"""A real `aifuncs serve` process on a fresh home whose process the test holds (to kill it), a fake upstream
that counts what it receives, and a helper process that holds one of the home's SQLite stores locked.

The invariant the accounting tests check: each request the upstream received has exactly one usage row (its
sends counted in `attempts`), and each answered request one inference row.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from servers import FakeServer, free_port

import aifuncs
import aifuncs.governance as gov

INVOCATIONS = "/serving-endpoints/{}/invocations"

# Holds `BEGIN EXCLUSIVE` on a store until its stdin closes; says "locked" once it holds it.
LOCKER = """
import sqlite3, sys
db = sqlite3.connect(sys.argv[1], timeout=30, isolation_level=None)
db.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
sys.stdin.read()
db.execute("ROLLBACK")
"""


@dataclass
class Served:
    url: str
    token: str
    upstream: FakeServer
    home: Path
    process: subprocess.Popen[bytes]

    def ask(self, endpoint: str = "llm", text: str = "hello", timeout: float = 30) -> httpx.Response:
        return httpx.post(
            self.url + INVOCATIONS.format(endpoint),
            json={"messages": [{"role": "user", "content": text}]},
            headers={"Authorization": f"Bearer {self.token}"},
            timeout=timeout,
        )


def wait_until(condition: Callable[[], Any], timeout_s: float, every_s: float = 0.05) -> Any:
    """`condition()`'s first truthy value within `timeout_s`, else its last value."""
    deadline = time.monotonic() + timeout_s
    while True:
        found = condition()
        if found or time.monotonic() > deadline:
            return found
        time.sleep(every_s)


def stop_running_job(upstream: FakeServer, job: Path, timeout_s: float) -> str:
    """Run `aifuncs run JOB`, send it SIGTERM once the upstream has received 30 requests, and return its
    output once it has ended as a stopped run does (exit code 8, Exit.INTERRUPTED)."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    child = subprocess.Popen(
        [sys.executable, "-m", "aifuncs.cli", "run", str(job)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert wait_until(lambda: upstream.stats.requests >= 30 or child.poll() is not None, 60)
    assert child.poll() is None, child.communicate()[0]
    child.send_signal(signal.SIGTERM)
    output, _ = child.communicate(timeout=timeout_s)
    assert child.returncode == 8, output  # Exit.INTERRUPTED
    return output


def _select(path: Path, query: str) -> list[dict[str, Any]]:
    """Rows of a store as another process reads it (no flush, no replay)."""
    if not path.exists():
        return []
    db = sqlite3.connect(path, timeout=10)
    try:
        db.row_factory = sqlite3.Row
        return [dict(r) for r in db.execute(query)]
    except sqlite3.OperationalError:
        return []  # made, its table not yet
    finally:
        db.close()


def stored_usage(home: Path) -> list[dict[str, Any]]:
    return _select(home / "usage.db", "SELECT * FROM usage")


def stored_payloads(home: Path) -> list[dict[str, Any]]:
    return _select(home / "payloads.db", "SELECT request_id, status_code FROM payloads")


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """`path` (a SQLite store) held with BEGIN EXCLUSIVE by another process for the block."""
    holder = subprocess.Popen(
        [sys.executable, "-c", LOCKER, str(path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert holder.stdout is not None and holder.stdin is not None
    try:
        assert holder.stdout.readline().strip() == "locked"
        yield
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
        holder.stdout.close()


@pytest.fixture(name="served")
def served_fixture(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Callable[..., Any]]:
    """`with served(args=[...]) as s:` a server on this home: alice (CAN_QUERY on `llm` and `other`), one
    upstream behind both, an inference table on `llm`."""
    monkeypatch.delenv("AIFUNCS_TOKEN", raising=False)
    gov.create_user("alice")
    token = gov.create_token("alice")
    with FakeServer() as upstream:
        for name in ("llm", "other"):
            aifuncs.endpoints.create(name, kind="openai", model="m", base_url=upstream.url + "/v1")
            aifuncs.endpoints.update_permissions(
                name, [{"user_name": "alice", "permission_level": "CAN_QUERY"}]
            )
        aifuncs.endpoints.put_ai_gateway("llm", {"inference_table_config": {"enabled": True}})

        @contextlib.contextmanager
        def start(args: list[str] | None = None) -> Iterator[Served]:
            port = free_port()
            url = f"http://127.0.0.1:{port}"
            env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
            log_path = tmp_path / f"serve-{port}.log"
            command = [sys.executable, "-m", "aifuncs.cli", "serve", "--port", str(port), *(args or [])]
            with open(log_path, "w") as log:
                process = subprocess.Popen(
                    command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
                )
                try:
                    ready = wait_until(
                        lambda: _answers(url + "/health") or process.poll() is not None, 120, 0.3
                    )
                    assert ready and process.poll() is None, log_path.read_text()
                    yield Served(url, token, upstream, home, process)
                finally:
                    if process.poll() is None:
                        with contextlib.suppress(ProcessLookupError):
                            os.killpg(process.pid, signal.SIGTERM)
                        process.wait(timeout=60)

        yield start


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.TransportError:
        return False
