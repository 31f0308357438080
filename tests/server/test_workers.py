"""Server processes sharing AIFUNCS_HOME (two workers, two servers: the same) hold one rate limit exactly."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path

import httpx
from servers import free_port, running

import aifuncs
import aifuncs.governance as gov


def test_a_limit_holds_across_two_server_processes(home: Path, tmp_path: Path) -> None:
    gov.create_user("alice")
    token = gov.create_token("alice")
    aifuncs.endpoints.create("doubler", kind="python", function="sample_models:doubled", returns="DOUBLE")
    aifuncs.endpoints.update_permissions("doubler", [{"user_name": "alice", "permission_level": "CAN_QUERY"}])
    aifuncs.endpoints.set_rate_limits("doubler", [{"calls": 120, "key": "endpoint", "burst": 4}])
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    urls = [f"http://127.0.0.1:{free_port()}" for _ in range(2)]

    async def hammer(seconds: float) -> tuple[float, list[float], list[int], set[str]]:
        admitted: list[float] = []
        waits: list[int] = []
        workers: set[str] = set()
        began = time.monotonic()  # no admission can come before the first request is sent
        end = began + seconds

        async def one(url: str) -> None:
            async with httpx.AsyncClient(
                base_url=url, headers={"Authorization": f"Bearer {token}"}
            ) as client:
                while time.monotonic() < end:
                    answer = await client.post(
                        "/serving-endpoints/doubler/invocations", json={"inputs": [1.0]}
                    )
                    workers.add(answer.headers["x-aifuncs-worker"])
                    if answer.status_code == 200:
                        admitted.append(time.monotonic())
                    else:
                        assert answer.status_code == 429, answer.text
                        waits.append(int(answer.headers["retry-after"]))

        await asyncio.gather(*(one(urls[i % 2]) for i in range(8)))
        return began, admitted, waits, workers

    commands = [
        [sys.executable, "-m", "aifuncs.cli", "serve", "--port", url.rsplit(":", 1)[1]] for url in urls
    ]
    with running(commands[0], urls[0] + "/health", tmp_path / "a.log", env):
        with running(commands[1], urls[1] + "/health", tmp_path / "b.log", env):
            began, admitted, waits, workers = asyncio.run(hammer(3.0))
    span = admitted[-1] - began  # every admission fell between the first request sent and the last answer
    assert len(admitted) <= 4 + span * 2 + 1e-6, (len(admitted), span)  # GCRA's bound: burst + 2 a second
    assert len(admitted) >= 4 + 2  # and the limit admitted its share (the processes start cold)
    assert waits and all(w >= 1 for w in waits)
    assert len(workers) == 2  # both processes answered, and together stayed under the one limit
