"""Kill and lock scenarios against a real `aifuncs serve` under steady load, and their accounting as the next
process to open the home reads it. The tests assert on the `Tally`; tests/bench/bench_faults.py prints it.

- `kill_a_worker`: `--workers 2`, an inference table on; one worker is killed with SIGKILL mid-load while the
  other keeps answering.
- `stop_while_locked`: one worker, SIGTERM while another process holds `usage.db` with `BEGIN EXCLUSIVE`.

The invariant (issue 25): each request the upstream received has exactly one usage row, its sends counted in
`attempts`, and each answered request one inference row. The bound: a request journaled as sent whose process
died before it went counts an attempt the upstream never saw, so `attempts` may exceed what the upstream
received by at most the attempts of the `interrupted` rows (requests in flight at the kill), never fall short.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
from servers import FakeServer, free_port

import aifuncs
import aifuncs.governance as gov
from aifuncs.governance.payloads import payload_log
from aifuncs.runtime._usage import UsageLog
from reliability.harness import locked, wait_until

TESTS = Path(__file__).resolve().parents[1]


@dataclass
class Tally:
    """What one scenario paid, answered and accounted."""

    upstream: int = 0  # requests the upstream received
    usage_rows: int = 0
    attempts: int = 0  # sends counted by the usage rows
    interrupted: int = 0  # rows of requests in flight when their process died
    interrupted_attempts: int = 0
    interrupted_received: int = 0  # ...of them, requests the upstream had received (paid, never answered)
    inference_rows: int = 0
    answered: int = 0  # requests whose client got a 200
    answered_after_fault: int = 0  # ...of them, answers that came after the kill or the lock began
    unanswered: int = 0  # requests whose connection died with their worker, or refused once stopping
    duplicates: int = 0  # usage or inference rows sharing a request id
    answered_unaccounted: int = 0  # answered requests without exactly one ok usage row and one inference row
    victim_served: bool = False  # the killed worker had a request on its way to the upstream
    stop_s: float = 0.0  # from SIGTERM to the server's exit
    interrupted_ids: list[str] = field(default_factory=list)  # their client_request_id
    notes: list[str] = field(default_factory=list)

    @property
    def lost(self) -> int:
        """Paid or answered requests with no row: sends the upstream received beyond those counted, and
        answered requests missing their rows."""
        return max(0, self.upstream - self.attempts) + self.answered_unaccounted

    @property
    def within_bound(self) -> bool:
        """Attempts count what the upstream received, over it only by requests in flight at a kill."""
        return self.upstream <= self.attempts <= self.upstream + self.interrupted_attempts


@contextlib.contextmanager
def server(home: Path, log_path: Path, args: list[str]) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """`aifuncs serve` on `home`: its URL and process (a session of its own, stopped with its workers)."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "AIFUNCS_HOME": str(home), "PYTHONPATH": str(TESTS)}
    env.pop("AIFUNCS_TOKEN", None)
    command = [sys.executable, "-m", "aifuncs.cli", "serve", "--port", str(port), *args]
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            ready = wait_until(lambda: _healthy(url) or process.poll() is not None, 120, 0.3)
            assert ready and process.poll() is None, log_path.read_text()
            yield url, process
        finally:
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGTERM)
                try:
                    process.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    os.killpg(process.pid, signal.SIGKILL)
                    process.wait(timeout=10)


def endpoint_for_load(endpoint: str, upstream: FakeServer) -> str:
    """An openai endpoint with its inference table on, and a user granted CAN_QUERY on it: that user's token."""
    user = f"{endpoint}-client"
    aifuncs.endpoints.create(endpoint, kind="openai", model="m", base_url=upstream.url + "/v1", max_retries=0)
    aifuncs.endpoints.put_ai_gateway(endpoint, {"inference_table_config": {"enabled": True}})
    gov.create_user(user)
    aifuncs.endpoints.update_permissions(endpoint, [{"user_name": user, "permission_level": "CAN_QUERY"}])
    return gov.create_token(user)


class Load:
    """`clients` threads asking `endpoint` in a loop, each request with an id of its own
    (`client_request_id`), a new connection each (so that both workers take some), until stopped."""

    def __init__(self, url: str, token: str, endpoint: str, clients: int = 4, name: str = "load") -> None:
        self._url = f"{url}/serving-endpoints/{endpoint}/invocations"
        self._headers = {"Authorization": f"Bearer {token}"}
        self._name = name
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self.answered: list[tuple[float, str]] = []  # (when, client_request_id)
        self.unanswered = 0
        self.refused: Counter[int] = Counter()
        self._threads = [threading.Thread(target=self._run, args=(n,), daemon=True) for n in range(clients)]

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=60)

    def count_since(self, moment: float) -> int:
        with self._lock:
            return sum(1 for when, _ in self.answered if when > moment)

    def _run(self, client: int) -> None:
        n = 0
        while not self._stop.is_set():
            n += 1
            rid = f"{self._name}-{client}-{n}"
            body = {"messages": [{"role": "user", "content": f"load {rid}"}], "client_request_id": rid}
            try:
                answer = httpx.post(self._url, json=body, headers=self._headers, timeout=30)
            except httpx.TransportError:  # its worker died with the request, or the server stopped
                with self._lock:
                    self.unanswered += 1
                time.sleep(0.05)
                continue
            with self._lock:
                if answer.status_code == 200:
                    self.answered.append((time.monotonic(), rid))
                else:
                    self.refused[answer.status_code] += 1


def kill_a_worker(
    home: Path, logs: Path, endpoint: str = "killed", clients: int = 4, answers: int = 30
) -> Tally:
    """Two workers under load (an upstream answering after 300 ms, so that each has requests out); once
    `answers` requests went upstream, one is killed with SIGKILL while a request it journaled as sent is
    unanswered; the other answers `answers` more. Then the server stops and this process (the next to open the
    home) reads the accounting."""
    tally = Tally()
    with FakeServer(delay_s=0.3, keep_bodies=True) as upstream:
        token = endpoint_for_load(endpoint, upstream)
        with server(home, logs / f"{endpoint}.log", ["--workers", "2"]) as (url, process):
            workers = wait_until(lambda: len(w := _workers(process.pid)) == 2 and w, 60)
            assert workers, f"two workers expected, found {_workers(process.pid)}"
            victim = workers[0]
            with Load(url, token, endpoint, clients) as load:
                tally.victim_served = bool(
                    wait_until(
                        lambda: upstream.stats.requests >= answers and _unsettled(home, victim), 60, 0.01
                    )
                )
                os.kill(victim, signal.SIGKILL)
                killed_at = time.monotonic()
                wait_until(lambda: load.count_since(killed_at) >= answers, 60)
                load.stop()
            tally.answered_after_fault = load.count_since(killed_at)
            tally.stop_s = _stop(process)
        received = upstream.settled()
        tally.upstream = received.requests
        texts = {str(body) for body in received.bodies}
    tally = _account(tally, home, endpoint, load)
    tally.interrupted_received = sum(
        1 for rid in tally.interrupted_ids if any(f"load {rid}'" in text for text in texts)
    )
    return tally


def stop_while_locked(
    home: Path, logs: Path, endpoint: str = "locked", clients: int = 2, answers: int = 30
) -> Tally:
    """One worker under load; another process holds usage.db with BEGIN EXCLUSIVE; after `answers` answers
    under the lock the server gets SIGTERM (and must exit all the same). The lock then clears, and this
    process reads."""
    tally = Tally()
    with FakeServer(delay_s=0.01) as upstream:
        token = endpoint_for_load(endpoint, upstream)
        with server(home, logs / f"{endpoint}.log", []) as (url, process):
            with Load(url, token, endpoint, 1, "warm") as warm:  # usage.db made, its rows written
                wait_until(lambda: len(warm.answered) >= 3, 30)
            assert wait_until(lambda: _rows_of(home, endpoint) >= 3, 10), "the first rows were not written"
            with locked(home / "usage.db"):
                locked_at = time.monotonic()
                with Load(url, token, endpoint, clients) as load:
                    wait_until(lambda: load.count_since(locked_at) >= answers, 60)
                    tally.stop_s = _stop(process)  # the load runs on into the stop
                tally.answered_after_fault = load.count_since(locked_at)
        tally.upstream = upstream.settled().requests
    load.answered += warm.answered
    load.unanswered += warm.unanswered
    return _account(tally, home, endpoint, load)


def _account(tally: Tally, home: Path, endpoint: str, load: Load) -> Tally:
    """The tally as a new process reads the home (it replays what dead processes left in their journals)."""
    usage = [r for r in UsageLog().read() if r["endpoint"] == endpoint]
    inference = [r for r in payload_log().read(home / "payloads.db") if r["endpoint"] == endpoint]
    tally.usage_rows, tally.inference_rows = len(usage), len(inference)
    tally.attempts = sum(r["attempts"] or 0 for r in usage)
    tally.interrupted = sum(1 for r in usage if r["status"] == "interrupted")
    tally.interrupted_attempts = sum(r["attempts"] or 0 for r in usage if r["status"] == "interrupted")
    tally.interrupted_ids = [r["client_request_id"] for r in usage if r["status"] == "interrupted"]
    tally.answered, tally.unanswered = len(load.answered), load.unanswered
    tally.duplicates = _repeated([r["request_id"] for r in usage]) + _repeated(
        [r["request_id"] for r in inference]
    )
    ok_usage = Counter(r["client_request_id"] for r in usage if r["status"] == "ok")
    logged = Counter(r["client_request_id"] for r in inference if r["status_code"] == 200)
    tally.answered_unaccounted = sum(1 for _, rid in load.answered if ok_usage[rid] != 1 or logged[rid] != 1)
    if load.refused:
        tally.notes.append(f"refused: {dict(load.refused)}")
    return tally


def _repeated(ids: list[Any]) -> int:
    return len(ids) - len(set(ids)) + ids.count(None)


def _stop(process: subprocess.Popen[bytes]) -> float:
    """SIGTERM to the server's session; seconds until it exited."""
    began = time.monotonic()
    os.killpg(process.pid, signal.SIGTERM)
    process.wait(timeout=60)
    return time.monotonic() - began


def _workers(pid: int) -> list[int]:
    """The uvicorn workers of server `pid`: its children started by multiprocessing's spawn."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            command = (entry / "cmdline").read_bytes()
        except (OSError, IndexError, ValueError):
            continue  # gone meanwhile
        if ppid == pid and b"spawn_main" in command:
            found.append(int(entry.name))
    return sorted(found)


def _unsettled(home: Path, pid: int) -> bool:
    """Whether process `pid`'s usage journal holds a request journaled as sent 20 to 150 ms ago and not settled:
    on its way to the upstream, whose answer takes 300 ms."""
    folder = home / "journal"
    sent: dict[str, float] = {}
    settled: set[str] = set()
    for path in folder.glob(f"usage-{pid}-*.journal") if folder.is_dir() else []:
        try:
            lines = path.read_bytes().splitlines()
        except FileNotFoundError:
            continue  # rewritten meanwhile
        for raw in lines:
            with contextlib.suppress(ValueError):
                line = json.loads(raw)
                if "sent" in line:
                    sent[line["sent"]["request_id"]] = datetime.fromisoformat(line["sent"]["ts"]).timestamp()
                else:
                    settled.add(line["row"]["request_id"])
    now = time.time()
    return any(0.02 <= now - ts <= 0.15 for rid, ts in sent.items() if rid not in settled)


def _rows_of(home: Path, endpoint: str) -> int:
    import sqlite3

    path = home / "usage.db"
    if not path.exists():
        return 0
    db = sqlite3.connect(path, timeout=10)
    try:
        return int(db.execute("SELECT count(*) FROM usage WHERE endpoint = ?", (endpoint,)).fetchone()[0])
    except sqlite3.OperationalError:
        return 0
    finally:
        db.close()


def _healthy(url: str) -> bool:
    try:
        return httpx.get(url + "/health", timeout=1).status_code == 200
    except httpx.TransportError:
        return False
