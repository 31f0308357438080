"""Benchmark: ai_query through a real llama.cpp server against the official `openai` client on the same server.

    python tests/bench/bench_llama_cpp.py [--rows N] [--in-flight N] [--max-tokens N]

Starts `llama_cpp.server` with SmolLM2-135M-Instruct, then sends the same prompts (one chat request per
row, temperature 0) two ways at the same number of requests in flight: `ai_query` over a DuckDB table, and
`openai.AsyncOpenAI` with a semaphore, as a Python user would write it. Runs each twice, alternating, and
keeps the best. Target: ai_query at least 0.9x the official client's rows/s.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: the server helpers


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=48)
    parser.add_argument("--in-flight", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=24)
    args = parser.parse_args()
    home = tempfile.mkdtemp(prefix="aifuncs-bench-")
    os.environ["AIFUNCS_HOME"] = home

    import openai
    from servers import llama_cpp_server

    import aifuncs

    prompts = [f"Write one short sentence about the number {i}." for i in range(args.rows)]
    con = aifuncs.connect()
    con.execute("CREATE TABLE prompts (id INTEGER, body VARCHAR)")
    con.executemany("INSERT INTO prompts VALUES (?, ?)", list(enumerate(prompts)))
    parameters = {"max_tokens": args.max_tokens, "temperature": 0.0}

    with llama_cpp_server(Path(home)) as base_url:
        aifuncs.endpoints.create(
            "smollm2", kind="openai", base_url=base_url, model="smollm2", max_concurrency=args.in_flight
        )
        query = (
            "SELECT id, ai_query('smollm2', body, modelParameters => {'max_tokens': "
            f"{args.max_tokens}, 'temperature': 0.0}}, cache => false) AS answer FROM prompts"
        )  # every run asks the server: temperature 0 answers would otherwise come from the answer cache

        def through_sql() -> list[str]:
            return [a for _, a in sorted(aifuncs.sql(con, query).fetchall())]

        def through_openai() -> list[str]:
            async def run() -> list[str]:
                client = openai.AsyncOpenAI(base_url=base_url, api_key="unused", max_retries=0)
                gate = asyncio.Semaphore(args.in_flight)

                async def one(prompt: str) -> str:
                    async with gate:
                        reply = await client.chat.completions.create(
                            model="smollm2",
                            messages=[{"role": "user", "content": prompt}],
                            **parameters,  # type: ignore[arg-type]
                        )
                    return reply.choices[0].message.content or ""

                try:
                    return await asyncio.gather(*(one(p) for p in prompts))
                finally:
                    await client.close()

            return asyncio.run(run())

        through_openai()  # warm both: the model's first request loads its weights into the cache
        through_sql()
        best = {"ai_query": float("inf"), "openai client": float("inf")}
        answers = {}
        for _ in range(2):
            for name, run_once in (("ai_query", through_sql), ("openai client", through_openai)):
                start = time.perf_counter()
                answers[name] = run_once()
                best[name] = min(best[name], time.perf_counter() - start)

    assert len(answers["ai_query"]) == args.rows and all(answers["ai_query"]), "missing answers"
    same = sum(a == b for a, b in zip(answers["ai_query"], answers["openai client"], strict=True))
    print(
        f"rows: {args.rows}  in flight: {args.in_flight}  max_tokens: {args.max_tokens}  model: SmolLM2-135M"
    )
    for name, seconds in best.items():
        print(f"{name:14s} {args.rows / seconds:8.2f} rows/s  ({seconds:.2f} s, best of 2)")
    ratio = best["openai client"] / best["ai_query"]
    print(f"ratio ai_query / openai client: {ratio:.2f}x  (target >= 0.90x)")
    print(f"identical answers: {same}/{args.rows}  (temperature 0)")


if __name__ == "__main__":
    main()
