"""Benchmark: model workers scaling with load, scale to zero and cold start, on a real `aifuncs serve`.

    python tests/bench/bench_autoscale.py [--peak 200] [--model-ms 20] [--chart docs/images/autoscale.png]

1. A CPU-bound python model (`busy`: `--model-ms` of pure Python a row, workload_size Large, idle_s 10) under an
   open-loop load (each request sent at its time, whatever the answers do) ramping 5 -> peak -> 5 requests/s
   over about a minute: p50/p99 latency and the worker processes over time. Targets: p99 at the peak within 3x
   the model's own time once scaled; workers back to the minimum within 30 s of the load falling. The peak
   needs peak x model time cores: on a smaller machine it is lowered to what a quarter of its cores can answer
   (the server and the load generator share the machine).
2. Scale to zero: a server whose only endpoint has scale_to_zero_enabled (idle_s 3), once its workers are
   released, against a server with no model at all: resident memory (the server and its children; target
   within 10%), then the first request's latency (the cold start).
Prints a table, writes a PNG chart (latency and workers over time).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
TESTS = BENCH.parent
sys.path[:0] = [str(TESTS), str(BENCH)]  # servers, bench_server


def child_pids(server: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == server:
                    found.append(int(entry.name))
    return found


def workers_of(server: int) -> int:
    return sum(1 for p in child_pids(server) if b"aifuncs.workers._child" in _cmdline(p))


def _cmdline(pid: int) -> bytes:
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    return b""


def rss_mb(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
    return total / 1024


@contextlib.contextmanager
def serving(home: Path, env: dict[str, str], logs: Path) -> Iterator[tuple[str, int]]:
    """`aifuncs serve` on this home, once /health says 200; its URL and process id."""
    import subprocess

    import httpx
    from servers import free_port

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    full = {**env, "AIFUNCS_HOME": str(home)}
    with open(logs / f"serve-{port}.log", "w") as log:
        process = subprocess.Popen([sys.executable, "-m", "aifuncs.cli", "serve", "--port", str(port)], env=full,
                                   stdout=log, stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
        try:
            deadline = time.monotonic() + 180
            while True:
                with contextlib.suppress(httpx.TransportError):
                    if httpx.get(url + "/health", timeout=2).status_code == 200:
                        break
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"aifuncs serve did not start; see {log.name}")
                time.sleep(0.2)
            yield url, process.pid
        finally:
            process.terminate()
            process.wait(timeout=60)


def schedule(peak: float) -> list[tuple[float, float]]:
    """(seconds, requests/s) corners of the load: 5 for 5 s, up to the peak over 15 s, held 15 s, down over
    5 s, then 5 for 25 s (time for the pool to shrink)."""
    return [(0, 5), (5, 5), (20, peak), (35, peak), (40, 5), (65, 5)]


def rate_at(corners: list[tuple[float, float]], t: float) -> float:
    for (t0, r0), (t1, r1) in zip(corners, corners[1:], strict=False):
        if t0 <= t <= t1:
            return r0 + (r1 - r0) * (t - t0) / (t1 - t0) if t1 > t0 else r1
    return corners[-1][1]


async def load(url: str, token: str, server: int, corners: list[tuple[float, float]]) -> dict[str, Any]:
    """Open-loop requests along the schedule; each one's (sent, latency, ok), and the workers every 0.5 s."""
    import httpx

    results: list[tuple[float, float, bool]] = []
    workers: list[tuple[float, int]] = []
    headers = {"Authorization": f"Bearer {token}"}
    end = corners[-1][0]
    limits = httpx.Limits(max_connections=400, max_keepalive_connections=400)
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=60, limits=limits) as client:

        async def one(sent: float, value: float) -> None:
            began = time.perf_counter()
            try:
                answer = await client.post("/serving-endpoints/busy/invocations", json={"inputs": [value]})
                ok = answer.status_code == 200
            except httpx.HTTPError:
                ok = False
            results.append((sent, time.perf_counter() - began, ok))

        async def sample() -> None:
            while True:
                workers.append((time.perf_counter() - start, workers_of(server)))
                await asyncio.sleep(0.5)

        start = time.perf_counter()
        sampler = asyncio.ensure_future(sample())
        tasks = []
        t, i = 0.0, 0
        while t < end:
            wait = start + t - time.perf_counter()
            if wait > 0:
                await asyncio.sleep(wait)
            tasks.append(asyncio.ensure_future(one(t, float(i))))
            i += 1
            t += 1.0 / rate_at(corners, t)
        await asyncio.gather(*tasks)
        sampler.cancel()
    return {"results": sorted(results), "workers": workers}


def quantile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def chart(path: Path, figures: dict[str, Any], corners: list[tuple[float, float]], model_s: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = figures["results"]
    seconds = int(corners[-1][0]) + 1
    bins: list[list[float]] = [[] for _ in range(seconds)]
    for sent, latency, ok in results:
        if ok:
            bins[min(seconds - 1, int(sent))].append(latency * 1000)
    xs = [s for s in range(seconds) if bins[s]]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
    top.plot(xs, [quantile(bins[s], 0.5) for s in xs], label="p50")
    top.plot(xs, [quantile(bins[s], 0.99) for s in xs], label="p99")
    top.axhline(3 * model_s * 1000, color="grey", linestyle="--", label="3x the model's time")
    top.set_ylabel("latency (ms)")
    top.set_yscale("log")
    top.legend(loc="upper right")
    offered = top.twinx()
    offered.plot([c[0] for c in corners], [c[1] for c in corners], color="black", alpha=0.3)
    offered.set_ylabel("offered requests/s")
    bottom.step([w[0] for w in figures["workers"]], [w[1] for w in figures["workers"]], where="post")
    bottom.set_ylabel("model workers")
    bottom.set_xlabel("seconds")
    fig.suptitle("aifuncs serve: model workers under a 5 -> peak -> 5 requests/s load")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)


def single_row(root: Path, env: dict[str, str], logs: Path, seconds: int, rounds: int) -> None:
    """bench_server.py's single-row figure (the wine pipeline behind MLflow pyfunc, wrk with 64 connections, one
    server process) with the model in workers and in the server's own process, alternating, best of `rounds`."""
    import mlflow
    from bench_server import wrk
    from sklearn.datasets import load_wine
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    import aifuncs
    import aifuncs.governance as gov

    columns = ["alcohol", "malic_acid", "flavanoids", "color_intensity", "proline"]
    wine = load_wine(as_frame=True).frame
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=500)).fit(
        wine[columns], wine["target"]
    )
    os.environ["AIFUNCS_HOME"] = str(root / "wine")
    mlflow.sklearn.save_model(model, root / "wine-model", input_example=wine[columns].head(3),
                              serialization_format="cloudpickle")  # fmt: skip
    aifuncs.endpoints.create("wine", kind="mlflow", model_uri=str(root / "wine-model"))
    gov.create_user("ops", admin=True)
    token = gov.create_token("ops")
    body = {"dataframe_records": [wine[columns].iloc[0].to_dict()]}
    best: dict[str, float] = {}
    for _ in range(rounds):
        for label, flag in (("in the server's process", "0"), ("in model workers", "1")):
            with serving(root / "wine", {**env, "AIFUNCS_SERVE_MODEL_WORKERS": flag}, logs) as (url, _):
                target = url + "/serving-endpoints/wine/invocations"
                wrk(target, body, token, 2, 64)  # warm
                figure = wrk(target, body, token, seconds, 64)
            best[label] = max(best.get(label, 0.0), figure.requests_s)
    print(
        f"\nSingle-row requests/s (bench_server.py part 1: MLflow wine pipeline, wrk -c64, best of {rounds}):"
    )
    for label, value in best.items():
        print(f"  model {label:<26} {value:>9,.0f} req/s")
    ratio = best["in model workers"] / best["in the server's process"]
    print(f"  workers / in-process: {ratio:.2f} (target >= 0.90)")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--peak", type=float, default=200.0, help="requests/s at the peak")
    parser.add_argument("--model-ms", type=float, default=20.0, help="the model's CPU time a request")
    parser.add_argument("--chart", default=str(TESTS.parent / "docs" / "images" / "autoscale.png"))
    parser.add_argument(
        "--single-row", action="store_true", help="only the single-row comparison (needs wrk)"
    )
    parser.add_argument("--seconds", type=int, default=10, help="wrk's seconds per single-row run")
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    model_s = args.model_ms / 1000
    peak = min(args.peak, 0.25 * cores / model_s)  # the server and the load need cores too
    if peak < args.peak:
        print(
            f"{cores} cores answer at most {cores / model_s:.0f} requests/s of this model: peak {peak:.0f}/s"
        )
    root = Path(tempfile.mkdtemp(prefix="aifuncs-autoscale-"))
    logs = root / "logs"
    logs.mkdir()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS / "workers"), str(TESTS)]),
           "BUSY_MODEL_S": str(model_s)}  # fmt: skip
    env.pop("AIFUNCS_TOKEN", None)
    if args.single_row:
        single_row(root, env, logs, args.seconds, 3)
        return
    import aifuncs
    import aifuncs.governance as gov

    def home(name: str, **endpoints: dict[str, Any]) -> tuple[Path, str]:
        path = root / name
        os.environ["AIFUNCS_HOME"] = str(path)
        for endpoint, options in endpoints.items():
            aifuncs.endpoints.create(endpoint, kind="python", returns="DOUBLE", **options)
        gov.create_user("ops", admin=True)
        return path, gov.create_token("ops")

    busy_home, token = home(
        "busy", busy={"function": "worker_models:busy", "workload_size": "Large", "idle_s": 10}
    )
    zero_home, zero_token = home(
        "zero", zero={"function": "worker_models:busy", "scale_to_zero_enabled": True, "idle_s": 3}
    )
    empty_home, _ = home("empty")
    corners = schedule(peak)

    with serving(busy_home, env, logs) as (url, server):
        figures = asyncio.run(load(url, token, server, corners))
    results, workers = figures["results"], figures["workers"]
    failed = sum(1 for r in results if not r[2])
    scaled_at = next(
        (t for t, n in workers if t >= corners[2][0] - 10 and n == max(n for _, n in workers)), None
    )
    hold = [
        r[1] for r in results if r[2] and corners[2][0] + 5 <= r[0] <= corners[3][0]
    ]  # at the peak, scaled
    calm = [r[1] for r in results if r[2] and r[0] < corners[1][0]]
    fell = corners[4][0]
    least = min(n for t, n in workers if t < corners[1][0]) if workers else 0
    back = next((t - fell for t, n in workers if t > fell and n <= max(1, least)), None)

    import httpx

    with serving(empty_home, env, logs) as (_, bare):
        time.sleep(2)
        bare_mb = rss_mb([bare, *child_pids(bare)])
    with serving(zero_home, env, logs) as (url, server):
        deadline = time.monotonic() + 60
        while workers_of(server) and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(1)
        zero_mb = rss_mb([server, *child_pids(server)])
        began = time.perf_counter()
        answer = httpx.post(url + "/serving-endpoints/zero/invocations", json={"inputs": [1.0]},
                            headers={"Authorization": f"Bearer {zero_token}"}, timeout=120)  # fmt: skip
        cold_s = time.perf_counter() - began
        assert answer.status_code == 200, answer.text
        began = time.perf_counter()
        httpx.post(url + "/serving-endpoints/zero/invocations", json={"inputs": [1.0]},
                   headers={"Authorization": f"Bearer {zero_token}"}, timeout=120)  # fmt: skip
        warm_s = time.perf_counter() - began

    p99_peak = quantile(hold, 0.99)
    print(
        f"\naifuncs serve, model workers: a python model of {args.model_ms:g} ms CPU a request, {cores} cores"
    )
    print(f"  {'load':<44} {'requests':>8} {'p50 ms':>8} {'p99 ms':>8}")
    print(
        f"  {'5 requests/s (before)':<44} {len(calm):>8} {quantile(calm, 0.5) * 1000:>8.1f} {quantile(calm, 0.99) * 1000:>8.1f}"
    )
    print(f"  {f'{peak:.0f} requests/s (peak, scaled)':<44} {len(hold):>8} {quantile(hold, 0.5) * 1000:>8.1f} {p99_peak * 1000:>8.1f}"
          f"   p99 {p99_peak / model_s:.1f}x the model's time (target <= 3x)")  # fmt: skip
    print(f"  failed requests: {failed} of {len(results)}")
    print(f"  workers: {least} at 5/s, {max(n for _, n in workers)} at the peak (scaled by {scaled_at:.0f} s),"
          f" back to {least} {back:.0f} s after the load fell (target <= 30 s)" if back is not None and scaled_at
          else f"  workers over time (s, workers): {[(round(t), n) for t, n in workers[::4]]}")  # fmt: skip
    print(f"  scaled to zero: {zero_mb:.0f} MB resident (server and children) against {bare_mb:.0f} MB with no model"
          f" ({zero_mb / bare_mb - 1:+.1%}, target within 10%)")  # fmt: skip
    print(f"  cold start: the first request after zero {cold_s:.2f} s (the next {warm_s * 1000:.1f} ms)")
    chart(Path(args.chart), figures, corners, model_s)
    print(f"  chart: {args.chart}")


if __name__ == "__main__":
    main()
