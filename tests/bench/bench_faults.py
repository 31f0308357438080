"""Benchmark: ai_query's throughput when a server fails a share of first attempts, and against a server
that refuses more than N requests in flight.

    python tests/bench/bench_faults.py [--rows N] [--rates 0 0.05 0.35] [--limit N] [--accounting-only]

Two cases, each measured fault-free and with faults in the same run, side by side:
- "20 ms, temperature 0": an OpenAI-compatible chat server on 127.0.0.1 (its own process) answers each request
  after 20 ms; the call is reusable, so a stalled request may be hedged.
- "0 ms, sampled": the same server answering at once, and chat without a temperature (sampled): no reuse and
  no hedging, so a stall is waited out; it must not idle a slot meanwhile.
A share of first attempts fails, split evenly between a 429 with `Retry-After: 0.2`, a 500, a dropped
connection, an HTML 502 and a 1.5 s stall (a retry of the same request never fails). 2,000 rows go to a new
endpoint per rate. Targets: 0 wrong rows; at least 0.6x the fault-free rate at 5% and 0.5x at 35%. Where stalls are
waited out a run cannot end before its last stall does: the "floor" column is the fault-free time plus one
stall, the least any client could take (on a fast machine it alone is below 0.5x). Then a server that answers 429 (no Retry-After) to any request beyond N in
flight: the client must settle within 20% of N.

Then every paid request accounted through a kill and a lock (tests/reliability/scenarios.py): a real
`aifuncs serve` under steady load (clients asking one chat each on new connections, an inference table on).
One of `--workers 2` killed with SIGKILL (16 clients, an upstream answering after 300 ms; after 300 requests
went upstream, while the worker has one on its way; 300 answers more after it), and a server stopped by
SIGTERM (2 clients, 10 ms; after 300 answers) while another process holds `usage.db` with `BEGIN EXCLUSIVE`.
Counted once the next process has opened the home: requests the upstream received, usage rows and their
attempts, rows `interrupted` (in flight at the kill) and how many of them the upstream had received, inference
rows, answered requests. Target: 0 rows lost (attempts never short of what the upstream received, each
answered request one usage row and one inference row), 0 duplicates, the stop under a locked log within a few
seconds.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: the fake server

DELAY_S = 0.02
SLOW_S = 1.5
KINDS = ("rate_limit", "server_error", "drop", "bad_gateway", "slow")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--rates", type=float, nargs="+", default=[0.0, 0.05, 0.35])
    parser.add_argument("--limit", type=int, default=8, help="the limiting server's N")
    parser.add_argument("--accounting-only", action="store_true", help="only the kill and lock scenarios")
    args = parser.parse_args()
    os.environ["AIFUNCS_HOME"] = tempfile.mkdtemp(prefix="aifuncs-bench-")
    if not args.accounting_only:
        throughput(args)
    accounting()


def throughput(args: argparse.Namespace) -> None:
    """Throughput under faults, each case fault-free and faulty side by side; then the limiting server."""
    from servers import FakeServer, Faults

    import aifuncs
    from aifuncs.runtime import default_runtime

    con = aifuncs.connect()
    cases = [  # name, server delay, model parameters, whether a stall is waited out (not hedged)
        ("20 ms, temperature 0", DELAY_S, ", modelParameters => {'temperature': 0}", False),
        ("0 ms, sampled", 0.0, "", True),
    ]
    print(f"rows: {args.rows:,}  client: 16 in flight; faults on first attempts: {', '.join(KINDS)} in equal"
          f" shares (429 with Retry-After 0.2 s, stalls of {SLOW_S:g} s)")  # fmt: skip
    print(f"{'case':>21} {'faults':>7} {'seconds':>8} {'floor':>6} {'rows/s':>8} {'vs none':>8} {'wrong':>6}"
          f" {'requests':>9}  faults seen")  # fmt: skip
    kept: dict[tuple[str, float], float] = {}
    number = 0
    for case, delay_s, parameters, waited in cases:
        base: float | None = None
        for rate in args.rates:
            number += 1
            seconds, wrong, stats = run_once(con, args.rows, number, rate, delay_s, parameters)
            rate_rows = args.rows / seconds
            base = base or rate_rows
            kept[case, rate] = rate_rows / base
            floor = f"{args.rows / base + SLOW_S:6.2f}" if waited and rate else f"{'-':>6}"
            seen = ", ".join(f"{k} {v}" for k, v in sorted(stats.faults.items()))
            print(f"{case:>21} {rate:7.0%} {seconds:8.2f} {floor} {rate_rows:8.0f} {rate_rows / base:7.2f}x"
                  f" {wrong:6d} {stats.requests:9,}  {seen or '-'}")  # fmt: skip
    targets = {0.05: 0.6, 0.35: 0.5}
    for case, *_ in cases:
        met = ", ".join(
            f"{r:.0%}: {kept[case, r]:.2f}x (target >= {t}x)" for r, t in targets.items() if (case, r) in kept
        )
        print(f"throughput kept, {case}: {met}")

    query = (
        "SELECT id, ai_query('{ep}', body, modelParameters => {{'temperature': 0}}) FROM items ORDER BY id"
    )
    n = args.limit
    con.execute(f"CREATE OR REPLACE TABLE items AS SELECT i AS id, 'limited item ' || i AS body"
                f" FROM range({args.rows}) t(i)")  # fmt: skip
    with FakeServer(delay_s=0.05, faults=Faults(max_in_flight=n)) as server:
        aifuncs.endpoints.create("limited", kind="openai", model="m", base_url=server.url + "/v1",
                                 max_concurrency=2 * n)  # fmt: skip
        started = time.perf_counter()
        rows = aifuncs.sql(con, query.format(ep="limited")).fetchall()
        seconds = time.perf_counter() - started
        stats = server.stats
    arrivals = stats.arrivals_in_flight
    settled = statistics.median(arrivals[len(arrivals) // 2 :])  # in flight as each request arrived, 2nd half
    limit = next(v.limit for k, v in default_runtime()._limits.items() if '"limited"' in k)
    wrong = sum(1 for i, answer in rows if answer != f"echo: limited item {i}")
    print(
        f"server refusing more than {n} in flight (client may send {2 * n}): {seconds:.2f} s, {wrong} wrong,"
        f" {stats.faults['busy']} refused; in flight at the server (median, second half) {settled:g},"
        f" client limit at the end {limit:.1f}: {abs(settled - n) / n:.0%} from N (target within 20%)"
    )


def accounting() -> None:
    """The kill and lock scenarios of tests/reliability, their counts side by side."""
    from reliability.scenarios import Tally, kill_a_worker, stop_while_locked

    home = Path(os.environ["AIFUNCS_HOME"])
    logs = Path(tempfile.mkdtemp(prefix="aifuncs-bench-logs-"))
    print("\nevery paid request accounted: a real `aifuncs serve`, steady load, counted by the next process")
    print(f"{'scenario':>34} {'upstream':>9} {'usage rows':>11} {'attempts':>9} {'interrupted':>12} {'of them received':>17}"
          f" {'inference':>10} {'answered':>9} {'after':>6} {'cut':>4} {'dup':>4} {'stop s':>7} {'rows lost':>10}")  # fmt: skip
    scenarios: list[tuple[str, Tally]] = [
        ("SIGKILL of 1 of 2 workers", kill_a_worker(home, logs, "bench-killed", clients=16, answers=300)),
        ("SIGTERM while usage.db locked", stop_while_locked(home, logs, "bench-locked", answers=300)),
    ]
    for name, t in scenarios:
        print(f"{name:>34} {t.upstream:9,} {t.usage_rows:11,} {t.attempts:9,} {t.interrupted:12,} {t.interrupted_received:17,}"
              f" {t.inference_rows:10,} {t.answered:9,} {t.answered_after_fault:6,} {t.unanswered:4} {t.duplicates:4}"
              f" {t.stop_s:7.2f} {t.lost:10}")  # fmt: skip
    met = all(t.lost == 0 and t.duplicates == 0 and t.within_bound for _, t in scenarios)
    print(
        "  attempts within [upstream, upstream + interrupted attempts], each answered request one usage and one"
        f" inference row: {'met' if met else 'NOT MET'} (target: 0 lost, 0 duplicates); 'after': answers after"
        " the kill or the lock began; 'cut': requests whose connection died with their worker or met the stop;"
        " 'stop s': SIGTERM to exit"
    )


def run_once(
    con: Any, rows: int, number: int, rate: float, delay_s: float, parameters: str
) -> tuple[float, int, Any]:
    """One run of `rows` ai_query rows against a fresh server failing `rate` of first attempts: its seconds,
    its wrong rows and what the server saw."""
    from servers import FakeServer, Faults

    import aifuncs

    share = rate / len(KINDS)
    faults = Faults(
        **{kind: share for kind in KINDS}, retry_after="0.2", slow_s=SLOW_S, first_attempts_only=True
    )
    con.execute(f"CREATE OR REPLACE TABLE items AS SELECT i AS id, 'run {number} item ' || i AS body"
                f" FROM range({rows}) t(i)")  # fmt: skip
    with FakeServer(delay_s=delay_s, faults=faults) as server:
        name = f"llm-{number}"
        aifuncs.endpoints.create(name, kind="openai", model="m", base_url=server.url + "/v1")
        started = time.perf_counter()
        answers = aifuncs.sql(
            con, f"SELECT id, ai_query('{name}', body{parameters}) FROM items ORDER BY id"
        ).fetchall()
        seconds = time.perf_counter() - started
        stats = server.stats
    wrong = sum(1 for i, answer in answers if answer != f"echo: run {number} item {i}") + rows - len(answers)
    return seconds, wrong, stats


if __name__ == "__main__":
    main()
