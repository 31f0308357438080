"""Benchmark: endpoints of several served entities against one-model endpoints, side by side in one run.

    python tests/bench/bench_entities.py [--rows N] [--remote-rows N] [--rest-requests N] [--split-requests N]

1. The bulk path: `CREATE TABLE AS SELECT ai_query(...)` over `--rows` rows (1M) of an in-process Python model,
   behind an endpoint of two entities split 90/10 (the same function twice) and behind a one-model endpoint;
   alternating, best of `--repeats`. Target (issue 27): the split as fast as one model (ratio >= 0.9x).
2. Remote: `--remote-rows` chat rows (20,000) of `ai_query` to OpenAI-compatible servers on 127.0.0.1 answering
   after 20 ms. The one-model endpoint sends to one server with 20 in flight; the split sends 90% to that
   server with 18 in flight and 10% to a second with 2, so both have the same ideal (1,000 rows/s) and the same
   20 requests in flight. Target: ratio >= 0.9x.
3. A dead primary with `fallback_config` over REST (`aifuncs serve`, one worker): the primary's server answers
   every request HTTP 500 (no retries: what the fallback itself costs, not the retries' backoff), the second
   entity is healthy; against a one-model endpoint on that healthy server. `hey`, 8 connections: requests/s and
   p50/p99 per request.
4. The split over REST: `--split-requests` (10,000) chat requests to an endpoint split 90/10 between two servers;
   the share each server saw against the weights (target: within 2 points).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent))  # tests/: the fake servers, sample models

DELAY_S = 0.02  # the remote servers' answer time
IN_FLIGHT = 20  # requests in flight, both remote endpoints alike
CHAT = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}


@dataclass
class Load:
    requests_s: float
    p50_ms: float
    p99_ms: float
    failed: int


def hey_n(url: str, body: Any, token: str, requests: int, connections: int) -> Load:
    """`requests` POSTs from `hey` over `connections` connections (a process of its own)."""
    command = ["hey", "-n", str(requests), "-c", str(connections), "-m", "POST", "-T", "application/json",
               "-d", json.dumps(body), "-H", f"Authorization: Bearer {token}", url]  # fmt: skip
    out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    quantiles = dict(re.findall(r"(\d+)% in ([\d.]+) secs", out))
    codes = dict(re.findall(r"\[(\d+)\]\s+(\d+) responses", out))
    return Load(
        float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),  # type: ignore[union-attr]
        float(quantiles["50"]) * 1000,
        float(quantiles["99"]) * 1000,
        sum(int(n) for code, n in codes.items() if code != "200")
        + requests
        - sum(int(n) for n in codes.values()),
    )


def bulk(rows: int, repeats: int) -> float:
    """Part 1: the split over one model on the bulk path; returns the ratio."""
    import aifuncs
    from aifuncs import ServedEntity

    function: dict[str, Any] = {"function": "sample_models:doubled", "returns": "DOUBLE"}
    aifuncs.endpoints.create("one", kind="python", **function)
    aifuncs.endpoints.create(
        "split",
        served_entities=[ServedEntity("prod", "python", function, 90), ServedEntity("next", "python", function, 10)],
    )  # fmt: skip
    con = aifuncs.connect()
    con.execute(f"CREATE TABLE t AS SELECT i::DOUBLE AS x FROM range({rows}) r(i)")
    query = "CREATE OR REPLACE TABLE o AS SELECT x, ai_query('{}', x) AS y FROM t"
    best = {"one": float("inf"), "split": float("inf")}
    for endpoint in ("one", "split"):  # warm: the functions imported, the planner's first statement
        aifuncs.sql(con, query.format(endpoint).replace("FROM t", "FROM t LIMIT 1000"))
    for _ in range(repeats):
        for endpoint in ("one", "split"):
            began = time.perf_counter()
            aifuncs.sql(con, query.format(endpoint))
            best[endpoint] = min(best[endpoint], time.perf_counter() - began)
            wrong = con.execute("SELECT count(*) FROM o WHERE y IS DISTINCT FROM 2 * x").fetchone()
            assert wrong == (0,), f"{endpoint}: {wrong} wrong answers"
    ratio = best["one"] / best["split"]
    print(f"1. bulk path, {rows:,} rows of an in-process Python model, best of {repeats}")
    for endpoint in ("one", "split"):
        label = "one model" if endpoint == "one" else "two entities, 90/10"
        print(f"   {label:22} {best[endpoint]:7.3f} s {rows / best[endpoint]:>13,.0f} rows/s")
    print(f"   split / one model: {ratio:.2f}x (target >= 0.9x)")
    return ratio


def remote(rows: int) -> float:
    """Part 2: chat rows to loopback servers, one model against the split; returns the ratio."""
    from servers import FakeServer

    import aifuncs
    from aifuncs import ServedEntity

    def chat(url: str, in_flight: int) -> dict[str, Any]:
        return {"model": "m", "base_url": url + "/v1", "max_concurrency": in_flight}

    con = aifuncs.connect()
    query = "SELECT ai_query('{}', body, modelParameters => {{'temperature': 0}}, cache => false) FROM items"
    ideal = IN_FLIGHT / DELAY_S
    took: dict[str, float] = {}
    with FakeServer(delay_s=DELAY_S) as first, FakeServer(delay_s=DELAY_S) as second:
        aifuncs.endpoints.create("chat-one", kind="openai", **chat(first.url, IN_FLIGHT))
        aifuncs.endpoints.create(
            "chat-split",
            served_entities=[
                ServedEntity("prod", "openai", chat(first.url, IN_FLIGHT * 9 // 10), 90),
                ServedEntity("next", "openai", chat(second.url, IN_FLIGHT // 10), 10),
            ],
        )
        for number, endpoint in enumerate(("chat-one", "chat-split", "chat-one", "chat-split")):
            size = 200 if number < 2 else rows  # the first two warm the connections and the process
            con.execute(f"CREATE OR REPLACE TABLE items AS SELECT 'round {number} row ' || i AS body"
                        f" FROM range({size}) r(i)")  # fmt: skip
            before = (first.stats.requests, second.stats.requests)
            began = time.perf_counter()
            result = aifuncs.sql(con, query.format(endpoint))
            assert result is not None
            answers = result.fetchall()
            elapsed = time.perf_counter() - began
            assert len(answers) == size and all(a[0].startswith("echo: round") for a in answers)
            if number >= 2:
                took[endpoint] = elapsed
                sent = (first.stats.requests - before[0], second.stats.requests - before[1])
                took[endpoint + " share"] = sent[1] / max(1, sum(sent))
    ratio = took["chat-one"] / took["chat-split"]
    print(f"2. remote, {rows:,} chat rows, {DELAY_S * 1000:.0f} ms a request, {IN_FLIGHT} in flight either way"
          f" (ideal {ideal:,.0f} rows/s)")  # fmt: skip
    for endpoint, label in (("chat-one", "one model"), ("chat-split", "two entities, 90/10")):
        rate = rows / took[endpoint]
        share = f", {took[endpoint + ' share']:.1%} to the second server" if endpoint == "chat-split" else ""
        print(
            f"   {label:22} {took[endpoint]:7.2f} s {rate:>13,.0f} rows/s  {rate / ideal:.2f}x ideal{share}"
        )
    print(f"   split / one model: {ratio:.2f}x (target >= 0.9x)")
    return ratio


def rest(home: Path, requests: int, split_requests: int) -> None:
    """Parts 3 and 4: a real `aifuncs serve`, loaded by `hey`."""
    from servers import FakeServer, Faults, free_port, running

    import aifuncs
    import aifuncs.governance as gov
    from aifuncs import ServedEntity

    def chat(url: str, **options: Any) -> dict[str, Any]:
        return {"model": "m", "base_url": url + "/v1", **options}

    gov.create_user("ops", admin=True)
    token = gov.create_token("ops")
    port = free_port()
    base = f"http://127.0.0.1:{port}/serving-endpoints/{{}}/invocations"
    env = {**os.environ, "PYTHONPATH": str(BENCH.parent)}
    with (
        FakeServer(faults=Faults(server_error=1.0)) as dead,
        FakeServer() as healthy,
        FakeServer() as other,
    ):
        aifuncs.endpoints.create("healthy", kind="openai", **chat(healthy.url))
        aifuncs.endpoints.create(
            "fallback",
            served_entities=[
                ServedEntity("primary", "openai", chat(dead.url, max_retries=0), 100),
                ServedEntity("backup", "openai", chat(healthy.url), 0),
            ],
        )
        aifuncs.endpoints.put_ai_gateway("fallback", {"fallback_config": {"enabled": True}})
        aifuncs.endpoints.create(
            "rest-split",
            served_entities=[
                ServedEntity("prod", "openai", chat(other.url), 90),
                ServedEntity("next", "openai", chat(healthy.url), 10),
            ],
        )
        command = [sys.executable, "-m", "aifuncs.cli", "serve", "--port", str(port)]
        with running(command, f"http://127.0.0.1:{port}/health", home / "serve.log", env):
            loads = {}
            for connections in (8, 1):
                for endpoint in ("healthy", "fallback", "healthy", "fallback"):  # the first two warm
                    count = requests if connections > 1 else requests // 4
                    loads[endpoint, connections] = hey_n(
                        base.format(endpoint), CHAT, token, count, connections
                    )
            dead_saw = dead.stats.requests
            print(f"3. a dead primary with fallback_config over REST: {requests:,} chat requests on 8 connections,"
                  f" {requests // 4:,} on 1; 1 worker")  # fmt: skip
            for connections in (8, 1):
                for endpoint, label in (
                    ("healthy", "one healthy model"),
                    ("fallback", "dead primary, fallback"),
                ):
                    load = loads[endpoint, connections]
                    failed = f", {load.failed} failed" if load.failed else ""
                    print(f"   {label:24} {connections} conn. {load.requests_s:8,.0f} requests/s"
                          f"  p50 {load.p50_ms:6.2f} ms  p99 {load.p99_ms:6.2f} ms{failed}")  # fmt: skip
                healthy_load, fallback_load = loads["healthy", connections], loads["fallback", connections]
                print(f"   fallback / healthy, {connections} conn.: {fallback_load.requests_s / healthy_load.requests_s:.2f}x"
                      f" requests/s, p50 {fallback_load.p50_ms - healthy_load.p50_ms:+.2f} ms")  # fmt: skip
            print(f"   the dead primary was asked {dead_saw:,} times (each fallback request once)")

            before = (other.stats.requests, healthy.stats.requests)
            load = hey_n(base.format("rest-split"), CHAT, token, split_requests, 16)
            seen = (other.stats.requests - before[0], healthy.stats.requests - before[1])
    share = seen[1] / max(1, sum(seen))
    print(f"4. the split over REST: {split_requests:,} chat requests, weights 90/10, 16 connections")
    print(f"   answered {split_requests - load.failed:,} ({load.requests_s:,.0f} requests/s); the servers saw"
          f" {seen[0]:,} and {seen[1]:,}: {1 - share:.2%} / {share:.2%}, {abs(share - 0.10) * 100:.2f} points"
          " from the weights (target <= 2)")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows of the bulk-path CTAS")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--remote-rows", type=int, default=20_000)
    parser.add_argument("--rest-requests", type=int, default=2_000)
    parser.add_argument("--split-requests", type=int, default=10_000)
    parser.add_argument("--parts", default="bulk,remote,rest", help="which parts to run, comma-separated")
    args = parser.parse_args()
    if shutil.which("hey") is None:
        sys.exit("bench_entities needs hey (a Debian package): run `make bench-tools`.")
    home = Path(tempfile.mkdtemp(prefix="aifuncs-bench-"))
    os.environ["AIFUNCS_HOME"] = str(home / "home")
    os.environ.pop("AIFUNCS_TOKEN", None)
    load = os.getloadavg()[0]
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    print(f"commit {commit}; {os.cpu_count()} CPUs, load average {load:.2f} at the start\n")
    parts = set(args.parts.split(","))
    if "bulk" in parts:
        bulk(args.rows, args.repeats)
    if "remote" in parts:
        remote(args.remote_rows)
    if "rest" in parts:
        rest(home, args.rest_requests, args.split_requests)


if __name__ == "__main__":
    main()
