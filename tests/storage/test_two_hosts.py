"""Two `aifuncs serve` hosts, each with its own AIFUNCS_HOME, on one PostgreSQL database: identities and grants
are one truth. A token made through one host's home works on the other; a grant revoked through one holds on the
other within a second; one rate limit is counted once for both."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import psycopg
import pytest
from servers import FakeServer, free_port, running

import aifuncs
import aifuncs.governance as gov
from aifuncs.runtime._rollups import Rollups, Scope

MESSAGE = {"messages": [{"role": "user", "content": "hi"}]}
REFUSED = (403, 404)  # without a grant the endpoint is not even shown


def _host(home: Path, url: str, tmp_path: Path, port: int) -> object:
    env = {**os.environ, "AIFUNCS_HOME": str(home), "PYTHONPATH": str(Path(__file__).parents[1])}
    env.pop("AIFUNCS_TOKEN", None)
    env.pop("AIFUNCS_DATABASE_URL", None)  # given by the option instead
    command = [sys.executable, "-m", "aifuncs.cli", "serve", "--port", str(port), "--database-url", url]
    return running(command, f"http://127.0.0.1:{port}/health", tmp_path / f"serve-{port}.log", env)


def test_tokens_and_grants_hold_across_hosts(
    pg_url: str, home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AIFUNCS_DATABASE_URL", pg_url)
    monkeypatch.delenv("AIFUNCS_TOKEN", raising=False)
    gov.create_user("admin", admin=True)
    gov.create_user("alice")
    admin = gov.create_token("admin")
    other_home = tmp_path / "host-b"
    # alice's token is made by host B's home (its CLI), never by the one that made her
    made = subprocess.run(
        [sys.executable, "-m", "aifuncs.cli", "tokens", "create", "--for", "alice"],
        capture_output=True, text=True, timeout=120,
        env={**os.environ, "AIFUNCS_HOME": str(other_home)},
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    alice = next(w for w in made.stdout.split() if w.startswith("aif_"))
    with FakeServer() as upstream:
        aifuncs.endpoints.create("llm", kind="openai", model="m", base_url=upstream.url + "/v1")
        aifuncs.endpoints.update_permissions("llm", [{"user_name": "alice", "permission_level": "CAN_QUERY"}])
        port_a, port_b = free_port(), free_port()
        with _host(home, pg_url, tmp_path, port_a), _host(other_home, pg_url, tmp_path, port_b):  # type: ignore[attr-defined]
            a, b = f"http://127.0.0.1:{port_a}", f"http://127.0.0.1:{port_b}"

            answered: dict[str, int] = {a: 0, b: 0}  # 200s per host

            def ask(base: str, token: str) -> int:
                status = httpx.post(
                    base + "/serving-endpoints/llm/invocations",
                    json=MESSAGE, headers={"Authorization": f"Bearer {token}"}, timeout=60,
                ).status_code  # fmt: skip
                answered[base] += status == 200
                return status

            assert ask(a, alice) == 200 and ask(b, alice) == 200  # made on B, good on A; the endpoint on both
            # the admin revokes alice's grant through host A; host B refuses her within a second
            revoked = httpx.put(
                f"{a}/api/2.0/permissions/serving-endpoints/llm",
                json={"access_control_list": []},
                headers={"Authorization": f"Bearer {admin}"},
                timeout=60,
            )
            assert revoked.status_code == 200, revoked.text
            done = time.monotonic()
            statuses = []
            while time.monotonic() - done < 5:
                statuses.append(ask(b, alice))
                if statuses[-1] in REFUSED:
                    break
            took = time.monotonic() - done
            assert statuses[-1] in REFUSED, statuses
            assert took < 1.0, f"host B still answered alice {took:.2f} s after the revoke: {statuses}"
            assert ask(a, alice) in REFUSED
    # usage is one log: every answer of both hosts, read back here (a third home), in rows and in the rollups
    assert min(answered.values()) >= 1, answered
    con = aifuncs.connect()
    found = con.sql(
        "SELECT count(*) FROM aifuncs_usage WHERE requester = 'alice' AND status = 'ok'"
    ).fetchall()
    assert found == [(sum(answered.values()),)], answered
    rollups = Rollups(home / "usage.db")
    rollups.refresh()
    sums = rollups.daily_sums("2000-01-01", "requester", Scope(everything=True))
    assert [s.requests for s in sums if s.key == "alice"] == [sum(answered.values())]
    assert not (home / "usage.db").exists() and not (other_home / "usage.db").exists()
    # the token list is one list: both homes see alice's token
    listed = subprocess.run(
        [sys.executable, "-m", "aifuncs.cli", "tokens", "list", "--for", "alice"],
        capture_output=True, text=True, timeout=120,
        env={**os.environ, "AIFUNCS_HOME": str(home)},
    )  # fmt: skip
    assert "alice" in listed.stdout, listed.stdout + listed.stderr


def test_two_hosts_share_one_rate_limit(
    pg_url: str, home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """8 clients on two hosts (4 each) against 120 calls/min with a burst of 4: admitted within GCRA's bound
    for one limit, not two (each host counting its own would admit about twice as many)."""
    monkeypatch.setenv("AIFUNCS_DATABASE_URL", pg_url)
    monkeypatch.delenv("AIFUNCS_TOKEN", raising=False)
    gov.create_user("alice")
    alice = gov.create_token("alice")
    with FakeServer() as upstream:
        aifuncs.endpoints.create("llm", kind="openai", model="m", base_url=upstream.url + "/v1")
        aifuncs.endpoints.update_permissions("llm", [{"user_name": "alice", "permission_level": "CAN_QUERY"}])
        aifuncs.endpoints.set_rate_limits("llm", [{"calls": 120, "key": "endpoint", "burst": 4}])
        port_a, port_b = free_port(), free_port()
        with _host(home, pg_url, tmp_path, port_a), _host(tmp_path / "host-b", pg_url, tmp_path, port_b):  # type: ignore[attr-defined]
            bases = [f"http://127.0.0.1:{port_a}", f"http://127.0.0.1:{port_b}"]
            ready = threading.Barrier(8)
            seconds = 4.0
            admitted: list[tuple[float, float, str]] = []  # (sent, answered, host) of each 200
            statuses: list[int] = []
            lock = threading.Lock()

            def client(base: str) -> None:
                with httpx.Client(timeout=60, headers={"Authorization": f"Bearer {alice}"}) as http:
                    http.get(base + "/health")  # connected before the window opens
                    ready.wait()
                    stop = time.monotonic() + seconds
                    while (sent := time.monotonic()) < stop:
                        status = http.post(
                            base + "/serving-endpoints/llm/invocations", json=MESSAGE
                        ).status_code
                        with lock:
                            statuses.append(status)
                            if status == 200:
                                admitted.append((sent, time.monotonic(), base))

            threads = [threading.Thread(target=client, args=(bases[n % 2],)) for n in range(8)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(timeout=120)
            # the database cannot answer (another transaction holds the bucket's row): refused, not let through
            with psycopg.connect(pg_url) as holder:
                holder.execute("SELECT tat FROM limit_buckets WHERE key LIKE 'llm|%' FOR UPDATE")
                began = time.monotonic()
                held = httpx.post(
                    bases[1] + "/serving-endpoints/llm/invocations",
                    json=MESSAGE, headers={"Authorization": f"Bearer {alice}"}, timeout=60,
                )  # fmt: skip
                waited = time.monotonic() - began
    assert held.status_code == 503 and held.headers["Retry-After"] == "1", held.text
    assert "did not answer within 2 s" in held.text and pg_url.split(":")[2].split("@")[0] not in held.text
    assert waited < 10, waited  # a bounded wait, not a hang
    assert set(statuses) <= {200, 429}, sorted(set(statuses))
    assert statuses.count(429) > 20, "hammered, not trickled"
    assert {host for _, _, host in admitted} == set(bases)  # both hosts admitted some
    span = max(answered for _, answered, _ in admitted) - min(sent for sent, _, _ in admitted)
    assert len(admitted) <= 4 + 2 * span + 1e-6, (len(admitted), span)
    assert len(admitted) >= 4 + 2 * (seconds - 1.0)  # and the limit's room was used, not withheld
