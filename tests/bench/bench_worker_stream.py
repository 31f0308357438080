"""Benchmark: time to first token of the local LLM (llama_cpp, SmolLM2-135M) streamed from a model worker
against the same model in the server's process, through a real `aifuncs serve`.

    python tests/bench/bench_worker_stream.py [--requests 40] [--max-tokens 16]

Two servers on one home, one with model workers (the default) and one with AIFUNCS_SERVE_MODEL_WORKERS=0;
each answers the same streamed /v1/chat/completions requests one after another (temperature 0), alternating
rounds, after a warm-up. Prints time to first token (client-observed) and to the last token, p50 and p90, and
the pooled path's overhead over the in-process one. Target: under 5 ms added to the first token at p50.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path[:0] = [str(BENCH.parent), str(BENCH)]  # servers, bench_autoscale


def streamed(url: str, headers: dict[str, str], prompt: str, max_tokens: int) -> tuple[float, float, int]:
    """(first token s, last token s, pieces) of one streamed request."""
    import httpx

    body = {"model": "local", "stream": True, "temperature": 0, "max_tokens": max_tokens,
            "messages": [{"role": "user", "content": prompt}]}  # fmt: skip
    began = time.perf_counter()
    first, pieces = None, 0
    with httpx.stream("POST", url + "/v1/chat/completions", json=body, headers=headers, timeout=120) as reply:
        reply.raise_for_status()
        for line in reply.iter_lines():
            if line.startswith("data: {") and '"content"' in line:
                pieces += 1
                if first is None:
                    first = time.perf_counter() - began
    assert first is not None, "no piece came back"
    return first, time.perf_counter() - began, pieces


def quantiles(values: list[float]) -> tuple[float, float]:
    ordered = sorted(values)
    return statistics.median(ordered), ordered[int(0.9 * (len(ordered) - 1))]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=40)
    parser.add_argument("--max-tokens", type=int, default=16)
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="aifuncs-bench-"))
    os.environ["AIFUNCS_HOME"] = str(home)
    os.environ.pop("AIFUNCS_TOKEN", None)
    from bench_autoscale import serving

    import aifuncs
    import aifuncs.governance as gov

    aifuncs.endpoints.create("local", kind="llama_cpp", max_tokens=args.max_tokens)
    gov.create_user("bench", admin=True)
    headers = {"Authorization": f"Bearer {gov.create_token('bench')}"}
    prompts = [f"Write one short sentence about the number {i}." for i in range(args.requests)]
    results: dict[str, list[tuple[float, float, int]]] = {"worker": [], "in-process": []}
    env = {k: v for k, v in os.environ.items() if k != "AIFUNCS_TOKEN"}
    with (
        serving(home, {**env, "AIFUNCS_SERVE_MODEL_WORKERS": "1"}, home) as (pooled, _),
        serving(home, {**env, "AIFUNCS_SERVE_MODEL_WORKERS": "0"}, home) as (inline, _),
    ):
        for url in (pooled, inline):  # warm-up: the in-process model loads on its first request
            for _ in range(3):
                streamed(url, headers, "Say hi.", args.max_tokens)
        for start in range(0, len(prompts), 5):  # alternating rounds of 5: the machine's load falls on both
            for label, url in (("worker", pooled), ("in-process", inline)):
                for prompt in prompts[start : start + 5]:
                    results[label].append(streamed(url, headers, prompt, args.max_tokens))
    print(
        f"{args.requests} streamed requests each, max_tokens {args.max_tokens}, one at a time, {os.cpu_count()} cores"
    )
    print(f"{'':<12}{'first p50 ms':>14}{'first p90 ms':>14}{'last p50 ms':>13}{'pieces':>8}")
    medians = {}
    for label, rows in results.items():
        first50, first90 = quantiles([r[0] for r in rows])
        last50, _ = quantiles([r[1] for r in rows])
        medians[label] = first50
        pieces = statistics.mean(r[2] for r in rows)
        print(
            f"{label:<12}{first50 * 1000:>14.1f}{first90 * 1000:>14.1f}{last50 * 1000:>13.1f}{pieces:>8.1f}"
        )
    print(
        f"first token through the worker: {(medians['worker'] - medians['in-process']) * 1000:+.1f} ms at p50"
    )


if __name__ == "__main__":
    main()
