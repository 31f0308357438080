"""The statements' pool: one principal's queue of long jobs does not hold back another's."""

from __future__ import annotations

import threading
import time

from aifuncs.server._fair import FairPool


def test_a_principal_runs_at_most_its_share_and_others_go_first() -> None:
    pool = FairPool(threads=2, share=1, name="test-fair")
    release = threading.Event()
    started: list[str] = []
    lock = threading.Lock()

    def job(name: str) -> None:
        with lock:
            started.append(name)
        release.wait(30)

    hogs = [pool.submit("mallory", lambda i=i: job(f"mallory-{i}")) for i in range(4)]
    alice = pool.submit("alice", lambda: job("alice"))
    deadline = time.monotonic() + 30
    while len(started) < 2 and time.monotonic() < deadline:  # both threads busy
        time.sleep(0.01)
    assert sorted(started) == ["alice", "mallory-0"]  # mallory's second waits for her share, alice does not
    release.set()
    for future in [*hogs, alice]:
        assert future.result(timeout=30) is None
    assert started[2:] == ["mallory-1", "mallory-2", "mallory-3"]
    pool.close()


def test_a_closed_pool_cancels_what_has_not_started() -> None:
    pool = FairPool(threads=1, share=1, name="test-fair")
    release = threading.Event()

    def hold() -> None:
        release.wait(30)

    running = pool.submit("a", hold)
    waiting = pool.submit("a", lambda: None)
    deadline = time.monotonic() + 30
    while not running.running() and time.monotonic() < deadline:
        time.sleep(0.01)
    pool.close()
    assert waiting.cancelled()
    release.set()
    assert running.result(timeout=30) is None
