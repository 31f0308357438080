"""Every paid request accounted: rows written while the server idles, after a SIGKILL, and through locks on the
home's stores; a lock on one store never stalls the server nor turns into a wrong answer."""

from __future__ import annotations

import concurrent.futures
import os
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx

import aifuncs
import aifuncs.governance.payloads
from aifuncs.runtime._usage import UsageLog
from reliability.harness import (
    locked,
    served_fixture,  # noqa: F401 - the `served` fixture
    stored_payloads,
    stored_usage,
    wait_until,
)


def _spent(rows: list[dict[str, Any]]) -> int:
    return sum(r["attempts"] or 0 for r in rows if r["endpoint"] in ("llm", "other"))


def _unique(rows: list[dict[str, Any]]) -> bool:
    ids = [r["request_id"] for r in rows]
    return None not in ids and len(ids) == len(set(ids))


def test_a_burst_is_written_while_the_server_idles(served: Callable[..., Any]) -> None:
    with served() as s:
        assert all(s.ask(text=f"burst {i}").status_code == 200 for i in range(21))
        sent = s.upstream.settled().requests
        assert sent == 21
        # another process sees every row within ~2 s though no request follows
        rows = wait_until(lambda: (r := stored_usage(s.home)) and _spent(r) == sent and r, 2.5)
        assert rows and _unique(rows), (len(stored_usage(s.home)), sent)
        assert (
            len(wait_until(lambda: len(stored_payloads(s.home)) == 21 and stored_payloads(s.home), 2.5)) == 21
        )


def test_a_killed_server_leaves_every_request_accounted(served: Callable[..., Any]) -> None:
    with served() as s:
        answered = 0
        stop = threading.Event()

        def load() -> int:
            done = 0
            while not stop.is_set():
                try:
                    if s.ask(text=f"load {threading.get_ident()} {done}", timeout=10).status_code == 200:
                        done += 1
                except httpx.TransportError:
                    break
            return done

        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            futures = [pool.submit(load) for _ in range(4)]
            assert wait_until(lambda: s.upstream.stats.requests >= 40, 30)
            os.killpg(s.process.pid, signal.SIGKILL)  # mid-load, nothing flushed on the way out
            s.process.wait(timeout=10)
            stop.set()
            answered = sum(f.result() for f in futures)
        sent = s.upstream.settled().requests
        assert answered <= sent
        # the next process to open the home replays the dead one's journal
        rows = UsageLog().read()
        assert _spent(rows) == sent, (_spent(rows), sent, len(stored_usage(s.home)))
        assert _unique(rows)
        assert len(aifuncs.governance.payloads.payload_log().read(s.home / "payloads.db")) >= answered
        assert UsageLog().read() == rows  # a second replay adds nothing


def test_a_locked_usage_log_delays_rows_without_losing_or_doubling_them(served: Callable[..., Any]) -> None:
    with served() as s:
        assert s.ask(text="before").status_code == 200
        with locked(s.home / "usage.db"):
            began = time.monotonic()
            answers = [s.ask(text=f"during {i}") for i in range(20)]
            assert all(a.status_code == 200 for a in answers)
            assert time.monotonic() - began < 10  # kept answering: the lock holds up no request
            time.sleep(1.0)  # the writer meets the lock meanwhile
        sent = s.upstream.settled().requests
        rows = wait_until(lambda: (r := stored_usage(s.home)) and _spent(r) == sent and r, 10)
        assert rows and _unique(rows), (_spent(stored_usage(s.home)), sent)


def test_a_locked_limiter_fails_closed_and_stalls_no_other_endpoint(served: Callable[..., Any]) -> None:
    aifuncs.endpoints.set_rate_limits("llm", [{"calls": 6, "key": "endpoint", "burst": 1}])  # no lease
    with served() as s:
        assert s.ask("llm").status_code == 200  # the limiter's store exists, its connection open
        with locked(s.home / "limits.db"):
            began = time.monotonic()
            limited = s.ask("llm", timeout=20)
            waited = time.monotonic() - began
            assert limited.status_code == 503, limited.text
            assert int(limited.headers["Retry-After"]) >= 1
            assert waited < 5  # a bounded wait, not the store's 30 s
            began = time.monotonic()
            assert all(s.ask("other", text=f"free {i}").status_code == 200 for i in range(10))
            assert time.monotonic() - began < 5
        assert wait_until(lambda: s.ask("llm").status_code == 200, 10)  # and back once it frees
        sent = s.upstream.settled().requests
        assert wait_until(lambda: (r := stored_usage(s.home)) and _spent(r) == sent, 5)


def test_a_locked_catalog_keeps_token_authentication_working(served: Callable[..., Any]) -> None:
    with served() as s:
        assert s.ask("other").status_code == 200
        with locked(s.home / "catalog.db"):
            began = time.monotonic()
            codes = []
            while time.monotonic() - began < 2.5:  # the token is rechecked once a second
                codes.append(s.ask("other", timeout=20).status_code)
            assert set(codes) == {200}, codes
            assert time.monotonic() - began < 8
