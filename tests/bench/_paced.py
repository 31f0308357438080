"""Open-loop load at a fixed rate, in a process of its own: `python _paced.py URL RATE SECONDS BODY [TOKEN]`.

Requests leave at even intervals over keep-alive connections (as many as are needed, up to 256) whether or not
earlier ones were answered, and each latency counts from when its request was due, so a stall shows in full
(wrk and hey wait for an answer before sending on a connection, and hey's paced clients all send at once).
Prints one JSON line: requests/s answered, p50 and p99 latency in ms, failures.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections import deque
from urllib.parse import urlsplit


async def main(url: str, rate: float, seconds: float, body: bytes, token: str | None) -> dict[str, float]:
    parts = urlsplit(url)
    head = (
        f"POST {parts.path} HTTP/1.1\r\nHost: {parts.netloc}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n" + (f"Authorization: Bearer {token}\r\n" if token else "") + "\r\n"
    ).encode()
    idle: deque[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = deque()
    opened = 0
    latencies: list[float] = []
    failed = 0

    async def one(due: float) -> None:
        nonlocal opened, failed
        if idle:  # the longest idle first: a server closes connections idle for seconds
            reader, writer = idle.popleft()
        elif opened < 256:
            opened += 1
            reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
        else:
            failed += 1
            return
        writer.write(head + body)
        line = await reader.readline()
        if not line:  # closed while idle: once more on a new connection
            reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
            writer.write(head + body)
            line = await reader.readline()
        if len(line.split()) < 2:
            raise RuntimeError(f"bad status line {line!r}")
        status = int(line.split()[1])
        length = 0
        while (line := await reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.partition(b":")
            if name.lower() == b"content-length":
                length = int(value)
        await reader.readexactly(length)
        latencies.append(time.perf_counter() - due)
        failed += status != 200
        idle.append((reader, writer))

    start = time.perf_counter() + 0.05
    tasks = []
    for i in range(int(rate * seconds)):
        due = start + i / rate
        await asyncio.sleep(max(0.0, due - time.perf_counter()))
        tasks.append(asyncio.ensure_future(one(due)))
    await asyncio.gather(*tasks)
    took = time.perf_counter() - start
    latencies.sort()
    return {
        "requests_s": len(latencies) / took,
        "p50_ms": latencies[len(latencies) // 2] * 1000,
        "p99_ms": latencies[int(len(latencies) * 0.99)] * 1000,
        "failed": failed,
    }


if __name__ == "__main__":
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    url, rate, seconds, body = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), sys.argv[4].encode()
    print(json.dumps(asyncio.run(main(url, rate, seconds, body, sys.argv[5] if len(sys.argv) > 5 else None))))
