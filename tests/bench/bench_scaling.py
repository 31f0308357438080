"""Benchmark: several `aifuncs serve` hosts on one PostgreSQL, and what of the shared state gives out first.

    python tests/bench/bench_scaling.py [--hosts 1,2,4,8] [--seconds 6] [--connections 8]

A throwaway PostgreSQL 15 cluster (as the tests make: fsync off, on this machine), and `--hosts` server processes
(at most 8), each with a home of its own (a host) and one worker, all naming that database. One governed
endpoint: a trivial Python function, a token user granted CAN_QUERY through two nested groups, a calls limit and
a tokens limit that are never hit, the inference table on (the per-request work of a governed request: token and
policy check, the limiter's admission, a usage row and an inference row). For each count of hosts, `wrk` (1
thread, `--connections` each) loads every host at once for `--seconds`; measured alongside: requests/s and
latency, the database's transactions, rows written and connections, and the CPU time of PostgreSQL, of the
servers and of the load generators (from /proc). Then the rows of the docs' table: what 25,000 requests/s takes
in server cores and in database cores, transactions, inserts and connections, from the per-request figures.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent))  # tests/: the PostgreSQL cluster, servers, sample models

TARGET = 25_000  # requests/s (Databricks' advertised figure for a serving endpoint)
TICKS = os.sysconf("SC_CLK_TCK")

SETUP = """
import sys
import aifuncs, aifuncs.governance as gov
gov.create_user("alice")
gov.create_group("analysts", members=["alice"])
gov.create_group("everyone", members=["analysts"])
aifuncs.endpoints.create("trivial", kind="python", function="sample_models:doubled", returns="DOUBLE")
aifuncs.endpoints.update_permissions("trivial", [{"group_name": "everyone", "permission_level": "CAN_QUERY"}])
aifuncs.endpoints.put_ai_gateway("trivial", {
    "rate_limits": [{"calls": 10_000_000, "key": "endpoint"}, {"tokens": 1_000_000_000, "key": "user"}],
    "inference_table_config": {"enabled": True}})
print(gov.create_token("alice"))
"""

STATS = (
    "SELECT xact_commit + xact_rollback, tup_inserted, tup_updated, tup_fetched"
    " FROM pg_stat_database WHERE datname = current_database()"
)

CONNECTED = "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"


@dataclass
class Run:
    hosts: int
    requests_s: float
    p50_ms: float
    p99_ms: float
    failed: int
    transactions: float  # a second
    inserted: float  # rows a second
    updated: float
    connections: int  # to the database from every host started (loaded or not), late in the run
    cpu: dict[str, float]  # CPU seconds a second, by group


def scalar(db: Any, query: str) -> int:
    return int(db.execute(query).fetchone()[0])


def cpu_seconds(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / TICKS


def busy_cores_seconds() -> float:
    """CPU seconds every process of the machine has spent (user, nice, system, irq, softirq, steal)."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    return sum(int(fields[i]) for i in (0, 1, 2, 5, 6, 7)) / TICKS


def group_pids(leader: int) -> list[int]:
    """Processes of a session (a server and its workers)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[3]) == leader:  # pgrp
                    found.append(int(entry.name))
    return found


def postgres_pids(data: Path) -> list[int]:
    postmaster = int((data / "postmaster.pid").read_text().split()[0])
    children = Path(f"/proc/{postmaster}/task/{postmaster}/children").read_text().split()
    return [postmaster, *map(int, children)]


@contextlib.contextmanager
def servers(count: int, url: str, root: Path, env: dict[str, str]) -> Iterator[list[tuple[str, int]]]:
    """`count` hosts: `aifuncs serve` with a home of its own each, started together; (base URL, pid) each."""
    import httpx
    from servers import free_port

    started = []
    try:
        for number in range(count):
            port = free_port()
            home = root / f"host-{number}"
            log = open(root / f"host-{number}.log", "w")  # noqa: SIM115 - the process keeps it
            process = subprocess.Popen(
                [sys.executable, "-m", "aifuncs.cli", "serve", "--port", str(port)],
                env={**env, "AIFUNCS_HOME": str(home), "AIFUNCS_DATABASE_URL": url},
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
            started.append((f"http://127.0.0.1:{port}", process))
        deadline = time.monotonic() + 180
        for base, process in started:
            while True:
                with contextlib.suppress(httpx.TransportError):
                    if httpx.get(base + "/health", timeout=2).status_code == 200:
                        break
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"a host did not start; see {root}")
                time.sleep(0.3)
        yield [(base, process.pid) for base, process in started]
    finally:
        for _, process in started:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for _, process in started:
            process.wait(timeout=60)


def wrk(url: str, token: str, seconds: int, connections: int) -> subprocess.Popen[str]:
    script = Path(tempfile.mkstemp(suffix=".lua")[1])
    script.write_text(
        'wrk.method = "POST"\n'
        f"wrk.body = {json.dumps(json.dumps({'inputs': [1.5]}))}\n"
        'wrk.headers["Content-Type"] = "application/json"\n'
        f'wrk.headers["Authorization"] = "Bearer {token}"\n'
    )
    return subprocess.Popen(
        ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", str(script), url],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip


def _ms(text: str) -> float:
    value, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", text).groups()  # type: ignore[union-attr]
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def load(
    hosts: list[tuple[str, int]], token: str, seconds: int, connections: int, db: Any, data: Path
) -> Run:
    """Every host loaded at once; the database's and the processes' work measured over the same span."""
    path = "/serving-endpoints/trivial/invocations"
    server_pids = [pid for _, leader in hosts for pid in group_pids(leader)]
    pg_pids = postgres_pids(data)
    before_stats = db.execute(STATS).fetchone()
    before_cpu = {
        "postgres": cpu_seconds(pg_pids),
        "servers": cpu_seconds(server_pids),
        "all": busy_cores_seconds(),
    }
    began = time.perf_counter()
    loads = [wrk(base + path, token, seconds, connections) for base, _ in hosts]
    time.sleep(seconds * 0.8)
    connected = scalar(db, CONNECTED)
    wrk_cpu = cpu_seconds([p.pid for p in loads])  # read before they exit
    outputs = [p.communicate()[0] for p in loads]
    elapsed = time.perf_counter() - began
    after_stats = db.execute(STATS).fetchone()
    cpu = {
        "postgres": (cpu_seconds(pg_pids) - before_cpu["postgres"]) / elapsed,
        "servers": (cpu_seconds(server_pids) - before_cpu["servers"]) / elapsed,
        "wrk": wrk_cpu / (seconds * 0.8),
    }
    cpu["others"] = (busy_cores_seconds() - before_cpu["all"]) / elapsed - sum(cpu.values())
    rate, p50, p99, failed = 0.0, 0.0, 0.0, 0
    for out in outputs:
        rate += float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
        latency = dict(re.findall(r"^\s+(50|99)%\s+(\S+)", out, re.M))
        p50, p99 = max(p50, _ms(latency["50"])), max(p99, _ms(latency["99"]))
        failed += sum(int(n) for n in re.findall(r"Non-2xx or 3xx responses: (\d+)", out))
        errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
        failed += sum(int(n) for n in errors.groups()) if errors else 0
    delta = [(a - b) / elapsed for a, b in zip(after_stats, before_stats, strict=True)]
    return Run(len(hosts), rate, p50, p99, failed, delta[0], delta[1], delta[2], int(connected), cpu)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--hosts", default="1,2,4,8", help="host counts to load, comma-separated (at most 8)")
    parser.add_argument("--seconds", type=int, default=6)
    parser.add_argument("--connections", type=int, default=8, help="wrk connections per host")
    args = parser.parse_args()
    counts = sorted({int(n) for n in args.hosts.split(",")})
    import psycopg
    from pg import BIN, cluster

    if not (BIN / "initdb").exists():
        sys.exit(f"bench_scaling needs PostgreSQL 15 at {BIN}: run `make test-servers`.")
    root = Path(tempfile.mkdtemp(prefix="aifuncs-bench-scaling-"))
    env = {k: v for k, v in os.environ.items() if k not in ("AIFUNCS_TOKEN", "AIFUNCS_DATABASE_URL")}
    env["PYTHONPATH"] = str(BENCH.parent)
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    print(f"commit {commit}; {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} at the start")
    with cluster() as running:
        with psycopg.connect(running.url(), autocommit=True) as admin:
            admin.execute("CREATE DATABASE scaling")
        url = running.url("scaling")
        made = subprocess.run(
            [sys.executable, "-c", SETUP], env={**env, "AIFUNCS_HOME": str(root / "setup"),
            "AIFUNCS_DATABASE_URL": url}, capture_output=True, text=True, check=True,
        )  # fmt: skip
        token = made.stdout.split()[-1]
        runs = []
        with servers(max(counts), url, root, env) as hosts, psycopg.connect(url, autocommit=True) as db:
            import httpx

            path = "/serving-endpoints/trivial/invocations"
            with ThreadPoolExecutor(8) as pool:  # each host loads the function and warms its pool
                for base, _ in hosts:
                    answers = list(pool.map(lambda _, b=base: httpx.post(b + path, json={"inputs": [1.5]},
                                   headers={"Authorization": f"Bearer {token}"}, timeout=60), range(16)))  # fmt: skip
                    assert all(a.status_code == 200 for a in answers), answers[0].text
            idle = scalar(db, CONNECTED)
            print(f"{len(hosts)} hosts started and warm: {idle} connections to the database while idle"
                  f" ({idle / len(hosts):.1f} a host)")  # fmt: skip
            print(
                f"{args.seconds} s per run, wrk -t1 -c{args.connections} per host, every process on this machine\n"
            )
            print(f"{'hosts':>5} {'req/s':>8} {'p50 ms':>7} {'p99 ms':>7} {'failed':>6} {'db tx/s':>8}"
                  f" {'ins/s':>7} {'upd/s':>6} {'conns':>5} {'cpu: pg':>8} {'servers':>8} {'wrk':>5} {'others':>6}")  # fmt: skip
            for count in counts:
                run = load(hosts[:count], token, args.seconds, args.connections, db, running.folder / "data")
                runs.append(run)
                print(f"{run.hosts:>5} {run.requests_s:>8,.0f} {run.p50_ms:>7.2f} {run.p99_ms:>7.2f} {run.failed:>6}"
                      f" {run.transactions:>8,.0f} {run.inserted:>7,.0f} {run.updated:>6,.0f} {run.connections:>5}"
                      f" {run.cpu['postgres']:>8.2f} {run.cpu['servers']:>8.2f} {run.cpu['wrk']:>5.2f} {run.cpu['others']:>6.2f}")  # fmt: skip
            usage = scalar(db, "SELECT count(*) FROM usage")
            payloads = scalar(db, "SELECT count(*) FROM payloads")
    print(f"\nrows on the database after the runs: usage {usage:,}, inference {payloads:,}")
    print("\nper request, and what 25,000 requests/s would take (linear in requests, from each run):")
    for run in runs:
        per = {name: value / run.requests_s for name, value in run.cpu.items() if name != "others"}
        print(f"  {run.hosts} loaded: server CPU {per['servers'] * 1e6:6.0f} us, PostgreSQL CPU {per['postgres'] * 1e6:5.0f} us,"
              f" {run.transactions / run.requests_s:.2f} transactions, {run.inserted / run.requests_s:.2f} rows inserted,"
              f" {run.connections / len(hosts):.1f} connections a host  ->  at {TARGET:,}/s: server cores"
              f" {per['servers'] * TARGET:5.1f}, database cores {per['postgres'] * TARGET:4.1f},"
              f" {run.transactions / run.requests_s * TARGET:,.0f} tx/s, {run.inserted / run.requests_s * TARGET:,.0f}"
              " rows/s")  # fmt: skip


if __name__ == "__main__":
    main()
