"""Benchmark: `aifuncs serve` beside `mlflow models serve` and LiteLLM's proxy, in one run.

    python tests/bench/bench_server.py [--seconds 10] [--connections 64] [--litellm PATH]

Load comes from `wrk` (peak requests/s: 2 threads, 64 connections) and `hey` (latency at a fixed rate), both
from Debian (`make bench-tools`), in processes of their own that share this machine's cores with the servers.

1. One MLflow pyfunc model (a scikit-learn pipeline on the wine data) behind `mlflow models serve` and behind
   `aifuncs serve`, 1 and 2 worker processes each, single-row and 32-row requests. Target: aifuncs at least 5x
   MLflow's single-row requests/s.
2. As an OpenAI gateway in front of one loopback OpenAI-compatible server answering after 20 ms: the server
   itself, LiteLLM's proxy (`--litellm`, no database) and aifuncs serve. Peak requests/s, and the latency each
   adds over the server alone: with one connection, and at half of aifuncs' peak (requests evenly spaced, from
   `_paced.py`). Targets: 5x LiteLLM's requests/s; aifuncs adds under 5 ms at p99 at half its peak.
3. Governance off (an admin's token, no limits, no inference table) against on (a user granted through a group,
   calls and tokens limits that are never hit, the inference table on), single rows, 2 workers: for the MLflow
   pyfunc (target: on within 15% of off) and for a trivial Python function, whose governed figure is the one to
   chase (Databricks advertises 25,000 queries a second on its cloud).
4. Time to first token of a streamed chat answer (`stream: true`), one connection: from the loopback server
   itself (its first piece at once, then 8 more 5 ms apart) and through aifuncs serve. Target: the gateway adds
   under 5 ms at p50. `--ttft-only` runs this part alone (no wrk, hey, MLflow or LiteLLM needed).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent))  # tests/: servers, sample models

CHAT = {"messages": [{"role": "user", "content": "Say hi"}], "max_tokens": 8}
_REPLY = json.dumps(
    {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 0,
        "model": "m",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
    }
).encode()


async def upstream(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """The OpenAI-compatible server the gateways stand in front of: every answer after 20 ms (raw ASGI on
    uvicorn, so it is never the bottleneck)."""
    if scope["type"] != "http":
        return
    more = True
    while more:
        message = await receive()
        more = message.get("more_body", False)
    if scope["path"].endswith("/models"):
        body = b'{"object": "list", "data": [{"id": "m", "object": "model"}]}'
    elif scope["path"].startswith(
        "/stream/"
    ):  # a streamed answer: the first piece at once, then one each 5 ms
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"text/event-stream")],
            }
        )
        for i in range(_PIECES):
            if i:
                await asyncio.sleep(0.005)
            chunk = {"choices": [{"index": 0, "delta": {"content": f"t{i} "}}]}
            await send(
                {
                    "type": "http.response.body",
                    "body": f"data: {json.dumps(chunk)}\n\n".encode(),
                    "more_body": True,
                }
            )
        await send({"type": "http.response.body", "body": b"data: [DONE]\n\n"})
        return
    else:
        await asyncio.sleep(0.02)
        body = _REPLY
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


_PIECES = 9


@dataclass
class Load:
    requests_s: float
    p50_ms: float
    p99_ms: float
    failed: int


def _ms(text: str) -> float:
    value, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", text).groups()  # type: ignore[union-attr]
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def wrk(url: str, body: Any, token: str | None, seconds: int, connections: int) -> Load:
    """Peak load: wrk with 2 threads."""
    script = Path(tempfile.mkstemp(suffix=".lua")[1])
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {token}"} if token else {})}
    script.write_text(
        'wrk.method = "POST"\n'
        f"wrk.body = {json.dumps(json.dumps(body))}\n"
        + "".join(f"wrk.headers[{json.dumps(k)}] = {json.dumps(v)}\n" for k, v in headers.items())
    )
    out = subprocess.run(
        ["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", str(script), url],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    script.unlink()
    latency = dict(re.findall(r"^\s+(50|99)%\s+(\S+)", out, re.M))
    failed = sum(int(n) for n in re.findall(r"Non-2xx or 3xx responses: (\d+)", out))
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    failed += sum(int(n) for n in errors.groups()) if errors else 0
    return Load(
        float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),  # type: ignore[union-attr]
        _ms(latency["50"]),
        _ms(latency["99"]),
        failed,
    )


def hey(url: str, body: Any, token: str | None, seconds: int, connections: int, rate: float | None) -> Load:
    """Latency at a fixed total rate (hey's rate is per connection), or one connection's back-to-back."""
    command = ["hey", "-z", f"{seconds}s", "-c", str(connections), "-m", "POST", "-T", "application/json",
               "-d", json.dumps(body)]  # fmt: skip
    if rate:
        command += ["-q", f"{rate / connections:.2f}"]
    if token:
        command += ["-H", f"Authorization: Bearer {token}"]
    out = subprocess.run([*command, url], capture_output=True, text=True, check=True).stdout
    quantiles = dict(re.findall(r"(\d+)%% in ([\d.]+) secs".replace("%%", "%"), out))
    codes = dict(re.findall(r"\[(\d+)\]\s+(\d+) responses", out))
    return Load(
        float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),  # type: ignore[union-attr]
        float(quantiles["50"]) * 1000,
        # under 100 answers hey prints no 99th percentile ("0% in 0.0000 secs"): the slowest is it
        float(quantiles.get("99") or re.search(r"Slowest:\s+([\d.]+)", out).group(1)) * 1000,  # type: ignore[union-attr]
        sum(int(n) for code, n in codes.items() if code != "200")
        + len(re.findall(r"Error distribution", out)),
    )


def warm(url: str, body: Any, token: str | None) -> None:
    """One request before measuring (a model loads on its first): it must succeed."""
    from concurrent.futures import ThreadPoolExecutor

    import httpx

    headers = {"Authorization": f"Bearer {token}"} if token else {}
    with ThreadPoolExecutor(8) as pool:  # each worker process loads its own model: 8 at once reach them all
        answers = list(pool.map(lambda _: httpx.post(url, json=body, headers=headers, timeout=120), range(8)))
    for answer in answers:
        if answer.status_code != 200:
            raise RuntimeError(f"{url} answered {answer.status_code}: {answer.text[:300]}")


def paced(url: str, body: Any, token: str | None, seconds: int, rate: float) -> Load:
    """Latency at a fixed rate, requests evenly spaced (`_paced.py`, a process of its own)."""
    command = [sys.executable, str(BENCH / "_paced.py"), url, f"{rate:.1f}", str(seconds), json.dumps(body)]
    out = subprocess.run([*command, *([token] if token else [])], capture_output=True, text=True, check=True)
    figures = json.loads(out.stdout)
    return Load(figures["requests_s"], figures["p50_ms"], figures["p99_ms"], figures["failed"])


@contextlib.contextmanager
def started(command: list[str], ready: str, logs: Path, name: str, env: dict[str, str]) -> Iterator[None]:
    from servers import running

    with running(command, ready, logs / f"{name}.log", env):
        yield


def _row(label: str, load: Load, ratio: str = "") -> str:
    failed = f"  ({load.failed} failed)" if load.failed else ""
    return f"  {label:<46} {load.requests_s:>9,.0f} req/s  p50 {load.p50_ms:7.2f} ms  p99 {load.p99_ms:7.2f} ms  {ratio}{failed}"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--litellm", default=str(BENCH.parents[1] / ".venv-litellm" / "bin" / "litellm"))
    parser.add_argument("--ttft-only", action="store_true", help="run only part 4 (time to first token)")
    parser.add_argument("--ttft-requests", type=int, default=300)
    args = parser.parse_args()
    if args.ttft_only:
        main_ttft(args.ttft_requests)
        return
    missing = [tool for tool in ("wrk", "hey") if shutil.which(tool) is None]
    if missing:
        sys.exit(f"bench_server needs {' and '.join(missing)} (Debian packages): run `make bench-tools`.")
    home = Path(tempfile.mkdtemp(prefix="aifuncs-bench-"))
    logs = home / "logs"
    logs.mkdir()
    os.environ["AIFUNCS_HOME"] = str(home / "home")
    os.environ.pop("AIFUNCS_TOKEN", None)
    env = {
        **os.environ,
        "PYTHONPATH": str(BENCH.parent),
        "MLFLOW_TRACKING_URI": f"sqlite:///{home}/mlflow.db",
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }  # mlflow runs uvicorn

    import mlflow
    from servers import free_port
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
    model_dir = home / "wine-model"
    mlflow.sklearn.save_model(
        model, model_dir, input_example=wine[columns].head(3), serialization_format="cloudpickle"
    )
    aifuncs.endpoints.create("wine", kind="mlflow", model_uri=str(model_dir))
    aifuncs.endpoints.create("trivial", kind="python", function="sample_models:doubled", returns="DOUBLE")
    aifuncs.endpoints.create(
        "trivial-governed", kind="python", function="sample_models:doubled", returns="DOUBLE"
    )
    aifuncs.endpoints.create("wine-governed", kind="mlflow", model_uri=str(model_dir))
    gov.create_user("ops", admin=True)
    gov.create_user("alice")
    gov.create_group("analysts", members=["alice"])
    upstream_port = free_port()
    aifuncs.endpoints.create(
        "chat", kind="openai", model="m", base_url=f"http://127.0.0.1:{upstream_port}/v1"
    )
    for name in ("wine", "wine-governed", "trivial-governed", "chat"):
        aifuncs.endpoints.update_permissions(
            name, [{"group_name": "analysts", "permission_level": "CAN_QUERY"}]
        )
    for name in ("wine-governed", "trivial-governed"):
        aifuncs.endpoints.put_ai_gateway(
            name,
            {
                "rate_limits": [
                    {"calls": 10_000_000, "key": "endpoint"},
                    {"tokens": 1_000_000_000, "key": "user"},
                ],
                "inference_table_config": {"enabled": True},
            },
        )
    ops, alice = gov.create_token("ops"), gov.create_token("alice")
    record = wine[columns].iloc[0].to_dict()
    single, rows32 = {"dataframe_records": [record]}, {"dataframe_records": [record] * 32}
    seconds, connections = args.seconds, args.connections

    @contextlib.contextmanager
    def serve_aifuncs(workers: int) -> Iterator[str]:
        url = f"http://127.0.0.1:{free_port()}"
        command = [sys.executable, "-m", "aifuncs.cli", "serve", "--port", url.rsplit(":", 1)[1], "--workers",
                   str(workers)]  # fmt: skip
        with started(command, url + "/health", logs, f"aifuncs-{workers}", env):
            yield url

    @contextlib.contextmanager
    def serve_mlflow(workers: int) -> Iterator[str]:
        url = f"http://127.0.0.1:{free_port()}"
        command = [sys.executable, "-m", "mlflow", "models", "serve", "-m", str(model_dir), "--env-manager",
                   "local", "-h", "127.0.0.1", "-p", url.rsplit(":", 1)[1], "-w", str(workers)]  # fmt: skip
        with started(command, url + "/health", logs, f"mlflow-{workers}", env):
            yield url

    print(
        f"wrk -t2 -c{connections} -d{seconds}s; hey for fixed rates; all on this machine's {os.cpu_count()} cores\n"
    )
    print("1. One MLflow pyfunc model (scikit-learn pipeline), 64 clients")
    figures: dict[str, Load] = {}
    for workers in (1, 2):
        with serve_mlflow(workers) as served:
            url = served + "/invocations"
            warm(url, single, None)
            figures[f"mlflow-{workers}-1"] = wrk(url, single, None, seconds, connections)
            figures[f"mlflow-{workers}-32"] = wrk(url, rows32, None, seconds, connections)
        with serve_aifuncs(workers) as served:
            url = served + "/serving-endpoints/wine/invocations"
            warm(url, single, alice)
            figures[f"aifuncs-{workers}-1"] = wrk(url, single, alice, seconds, connections)
            figures[f"aifuncs-{workers}-32"] = wrk(url, rows32, alice, seconds, connections)
    for workers in (1, 2):
        for rows in (1, 32):
            base = figures[f"mlflow-{workers}-{rows}"]
            ours = figures[f"aifuncs-{workers}-{rows}"]
            print(_row(f"mlflow models serve, {workers} worker(s), {rows} row(s)", base))
            ratio = ours.requests_s / base.requests_s
            target = " (target >= 5x)" if rows == 1 else ""
            print(
                _row(
                    f"aifuncs serve,       {workers} worker(s), {rows} row(s)", ours, f"{ratio:.1f}x{target}"
                )
            )

    print("\n2. OpenAI gateway in front of a loopback server answering after 20 ms")
    upstream_cmd = [sys.executable, "-m", "uvicorn", "--app-dir", str(BENCH), "bench_server:upstream", "--port",
                    str(upstream_port), "--lifespan", "off", "--no-access-log", "--log-level", "warning",
                    "--loop", "uvloop", "--http", "httptools"]  # fmt: skip
    upstream_url = f"http://127.0.0.1:{upstream_port}/v1"
    with started(upstream_cmd, upstream_url + "/models", logs, "upstream", env):
        direct = wrk(upstream_url + "/chat/completions", {"model": "m", **CHAT}, None, seconds, connections)
        direct_one = hey(upstream_url + "/chat/completions", {"model": "m", **CHAT}, None, seconds, 1, None)
        print(_row("the server alone", direct))
        print(_row("the server alone, one connection", direct_one))
        litellm: Load | None = None
        if Path(args.litellm).exists():
            litellm = _litellm(
                args.litellm, upstream_url, logs, env, seconds, connections, direct, direct_one
            )
        else:
            print(f"  LiteLLM: not measured ({args.litellm} is missing: `make bench-tools` installs it)")
        with serve_aifuncs(2) as served:
            url = served + "/serving-endpoints/chat/completions"
            body = {"model": "chat", **CHAT}
            warm(url, body, alice)
            peak = wrk(url, body, alice, seconds, connections)
            one = hey(url, body, alice, seconds, 1, None)
            half_direct = paced(upstream_url + "/chat/completions", {"model": "m", **CHAT}, None, seconds,
                                peak.requests_s / 2)  # fmt: skip
            half = paced(url, body, alice, seconds, peak.requests_s / 2)
        ratio = f"{peak.requests_s / litellm.requests_s:.1f}x LiteLLM (target >= 5x)" if litellm else ""
        print(_row("aifuncs serve, 2 workers", peak, ratio))
        print(_row("aifuncs serve, one connection", one, _added(one, direct_one)))
        print(_row(f"the server alone at {peak.requests_s / 2:,.0f} req/s", half_direct))
        print(_row(f"aifuncs serve at {peak.requests_s / 2:,.0f} req/s (half its peak)", half,
                   _added(half, half_direct) + " (target: p99 < 5 ms)"))  # fmt: skip

    print(
        "\n3. Governance off (an admin's token; no limits, no inference table) and on (a group's grant, calls and"
        " tokens limits never hit, the inference table), single rows, aifuncs serve with 2 workers"
    )
    with serve_aifuncs(2) as served:
        base = served + "/serving-endpoints/{}/invocations"
        runs = {}
        for model, body in (("wine", single), ("trivial", {"inputs": [1.5]})):
            warm(base.format(model), body, ops)
            warm(base.format(f"{model}-governed"), body, alice)
            runs[model] = (
                wrk(base.format(model), body, ops, seconds, connections),
                wrk(base.format(f"{model}-governed"), body, alice, seconds, connections),
            )
    for model, (off, on) in runs.items():
        label = "the MLflow pyfunc" if model == "wine" else "a trivial Python function"
        target = " (target >= 0.85x)" if model == "wine" else ""
        print(_row(f"{label}: off", off))
        print(_row(f"{label}: on", on, f"{on.requests_s / off.requests_s:.2f}x of off{target}"))
    on = runs["trivial"][1]
    print(f"\n  The figure to chase: {on.requests_s:,.0f} governed single-row requests/s on one {os.cpu_count()}-core"
          f" machine, {on.requests_s / 25_000:.1%} of the 25,000 Databricks advertises for its cloud.")  # fmt: skip
    shutil.rmtree(home, ignore_errors=True)


def _added(load: Load, base: Load) -> str:
    return f"adds {load.p50_ms - base.p50_ms:+.2f} ms p50, {load.p99_ms - base.p99_ms:+.2f} ms p99"


def _litellm(
    binary: str, upstream_url: str, logs: Path, env: dict[str, str], seconds: int, connections: int,
    direct: Load, direct_one: Load,
) -> Load:  # fmt: skip
    from servers import free_port

    port = free_port()
    config = logs / "litellm.yaml"
    config.write_text(
        "model_list:\n  - model_name: chat\n    litellm_params:\n      model: openai/m\n"
        f"      api_base: {upstream_url}\n      api_key: none\n"
    )
    url = f"http://127.0.0.1:{port}"
    command = [
        binary,
        "--config",
        str(config),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--num_workers",
        "1",
    ]
    key = (
        "sk-bench-" + os.urandom(8).hex()
    )  # its master key: the proxy checks it on each request, as we do tokens
    quiet = {**env, "LITELLM_LOG": "ERROR", "LITELLM_TELEMETRY": "False", "LITELLM_LOCAL_MODEL_COST_MAP": "True",
             "LITELLM_MASTER_KEY": key}  # fmt: skip
    with started(command, url + "/health/liveliness", logs, "litellm", quiet):
        body = {"model": "chat", **CHAT}
        warm(url + "/v1/chat/completions", body, key)
        peak = wrk(url + "/v1/chat/completions", body, key, seconds, connections)
        one = hey(url + "/v1/chat/completions", body, key, seconds, 1, None)
    print(_row("LiteLLM proxy, 1 worker", peak))
    print(_row("LiteLLM proxy, one connection", one, _added(one, direct_one)))
    return peak


def first_token_ms(url: str, body: Any, token: str | None, requests: int) -> list[float]:
    """Time to the first piece of text of each of `requests` streamed answers, one after another on one
    connection (a few first, unmeasured, to warm up)."""
    import time

    import httpx

    headers = {"Authorization": f"Bearer {token}"} if token else {}
    times: list[float] = []
    with httpx.Client(headers=headers, timeout=30) as client:
        for i in range(requests + 20):
            began = time.perf_counter()
            first = None
            with client.stream("POST", url, json={**body, "stream": True}) as response:
                response.raise_for_status()
                for line in response.iter_lines():
                    if first is None and '"content"' in line:
                        first = time.perf_counter() - began
            if i >= 20 and first is not None:
                times.append(first * 1000)
    return times


def _ttft_row(label: str, times: list[float], base: list[float] | None = None) -> str:
    import statistics

    ordered = sorted(times)
    p50, p99 = statistics.median(ordered), ordered[int(len(ordered) * 0.99) - 1]
    added = "" if base is None else f"  adds {p50 - statistics.median(base):+.2f} ms at p50 (target < 5)"
    return f"  {label:<46} first token p50 {p50:6.2f} ms  p99 {p99:6.2f} ms{added}"


def ttft(upstream_url: str, gateway_url: str, token: str, requests: int) -> None:
    print(f"\n4. Time to first token, streamed chat, one connection ({requests} requests)")
    direct = first_token_ms(
        upstream_url + "/stream/v1/chat/completions", {**CHAT, "model": "m"}, None, requests
    )
    print(_ttft_row("the server alone", direct))
    through = first_token_ms(
        gateway_url + "/serving-endpoints/chat/completions", {**CHAT, "model": "chat-stream"}, token, requests
    )
    print(_ttft_row("aifuncs serve, 1 worker", through, direct))


def main_ttft(requests: int) -> None:
    """Part 4 alone, on a home of its own."""
    home = Path(tempfile.mkdtemp(prefix="aifuncs-bench-"))
    logs = home / "logs"
    logs.mkdir()
    os.environ["AIFUNCS_HOME"] = str(home / "home")
    os.environ.pop("AIFUNCS_TOKEN", None)
    env = {**os.environ, "PYTHONPATH": str(BENCH.parent)}
    from servers import free_port

    import aifuncs
    import aifuncs.governance as gov

    upstream_port, port = free_port(), free_port()
    upstream_url, url = f"http://127.0.0.1:{upstream_port}", f"http://127.0.0.1:{port}"
    aifuncs.endpoints.create("chat-stream", kind="openai", model="m", base_url=upstream_url + "/stream/v1")
    gov.create_user("alice")
    aifuncs.endpoints.update_permissions(
        "chat-stream", [{"user_name": "alice", "permission_level": "CAN_QUERY"}]
    )
    token = gov.create_token("alice")
    upstream_cmd = [sys.executable, "-m", "uvicorn", "--app-dir", str(BENCH), "bench_server:upstream", "--port",
                    str(upstream_port), "--log-level", "warning"]  # fmt: skip
    serve_cmd = [sys.executable, "-m", "aifuncs.cli", "serve", "--port", str(port)]
    with started(upstream_cmd, upstream_url + "/models", logs, "upstream", env):
        with started(serve_cmd, url + "/health", logs, "aifuncs-ttft", env):
            ttft(upstream_url, url, token, requests)


if __name__ == "__main__":
    main()
    if "--ttft-only" not in sys.argv:  # the full run ends with part 4, on a home of its own
        main_ttft(300)
