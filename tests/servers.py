"""A small protocol-faithful server on 127.0.0.1 for tests and benchmarks, with fault injection.

It runs in a process of its own: in the test's process it would share the GIL with the client and
measure Python's thread switching (5 ms a time) instead of aifuncs.

It speaks the parts of three wire formats aifuncs uses (OpenAI chat/completions/embeddings, Anthropic
messages, MLflow `/invocations`), answers deterministically, counts what it receives, and can be told
to fail: 429 with Retry-After, 500, slow replies, dropped connections, malformed JSON.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any


@dataclass
class Faults:
    """Chance of each fault per request (deterministic for a seed)."""

    rate_limit: float = 0.0  # 429 with Retry-After
    server_error: float = 0.0  # 500
    slow: float = 0.0  # sleeps `slow_s` before answering
    drop: float = 0.0  # closes the connection without a reply
    malformed: float = 0.0  # 200 with a body that is not JSON
    bad_gateway: float = 0.0  # 502 with an HTML page, as a proxy sends it
    retry_after: str = "0.05"
    slow_s: float = 2.0
    seed: int = 7
    first_attempts_only: bool = False  # faults strike only a request body not seen before (never a retry)
    max_in_flight: int | None = None  # 429 (no Retry-After) to a request beyond this many in flight
    max_rows: int | None = None  # 413 to a request of more rows
    fail_first: int = 0  # the first this many requests answer `fail_status` (then it recovers)
    fail_status: int = 500  # 429 comes with Retry-After: `retry_after`


@dataclass
class Stats:
    requests: int = 0
    rows: int = 0
    faults: Counter[str] = field(default_factory=Counter)
    auth: set[str] = field(default_factory=set)
    bodies: list[Any] = field(default_factory=list)
    max_in_flight: int = 0
    in_flight: int = 0
    arrivals_in_flight: list[int] = field(default_factory=list)  # requests in flight as each one arrived
    paths: list[str] = field(default_factory=list)  # raw request targets, as sent (with keep_bodies)
    streams_done: int = 0  # streamed answers sent to their end
    streams_cut: list[int] = field(default_factory=list)  # streamed answers whose client hung up: pieces sent


class _QuietServer(ThreadingHTTPServer):
    request_queue_size = 128

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that timed out and hung up is part of the tests, not news


class _Server:
    def __init__(
        self,
        *,
        delay_s: float = 0.0,
        faults: Faults | None = None,
        keep_bodies: bool = False,
        capacity: int | None = None,
        stream_pieces: int = 8,
        stream_delay_s: float = 0.0,
    ) -> None:
        self.delay_s = delay_s
        # A body with "stream": true is answered as server-sent events: the answer in this many pieces, each
        # after this delay (a model that writes slowly).
        self.stream_pieces, self.stream_delay_s = stream_pieces, stream_delay_s
        # Like a GPU server with `capacity` slots: requests beyond it queue, so latency grows with load.
        self._slots = threading.Semaphore(capacity) if capacity else None
        self.faults = faults or Faults()
        self.keep_bodies = keep_bodies
        self.stats = Stats()
        self._lock = threading.Lock()
        self._random = random.Random(self.faults.seed)
        self._seen: set[str] = set()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # headers and body go out in two writes: no 40 ms ACK wait

            def log_message(self, *args: Any) -> None:  # quiet
                pass

            def do_GET(self) -> None:  # noqa: N802 - the http.server API
                if self.path == "/__stats":
                    with server._lock:
                        stats = dict(vars(server.stats))
                        stats["faults"] = dict(stats["faults"])
                        stats["auth"] = sorted(stats["auth"])
                        self._send(200, stats)
                else:
                    server._saw(self.path, self.headers)
                    self._send(200, {"status": "ok"})

            def do_POST(self) -> None:  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers.get("content-length", 0))) or b"{}")
                fault = server._begin(self.headers, body, self.path)
                try:
                    if fault == "drop":
                        self.close_connection = True
                        return
                    if fault == "rate_limit":
                        self._send(429, {"error": "slow down"}, {"Retry-After": server.faults.retry_after})
                        return
                    if fault == "server_error":
                        self._send(500, {"error": "boom"})
                        return
                    if fault == "bad_gateway":
                        self._send_raw(502, b"<html><body><h1>502 Bad Gateway</h1></body></html>")
                        return
                    if fault == "fail_first":
                        status = server.faults.fail_status
                        extra = {"Retry-After": server.faults.retry_after} if status == 429 else {}
                        self._send(status, {"error": f"failing the first {server.faults.fail_first}"}, extra)
                        return
                    if fault == "busy":
                        self._send(429, {"error": "too many requests in flight"})
                        return
                    if fault == "too_large":
                        self._send(413, {"error": "payload too large"})
                        return
                    if fault == "slow":
                        time.sleep(server.faults.slow_s)
                    if server.delay_s:
                        with server._slots or contextlib.nullcontext():
                            time.sleep(server.delay_s)
                    if fault == "malformed":
                        self._send_raw(200, b'{"choices": [ {"mess')
                        return
                    if body.get("stream"):
                        self._stream(body)
                        return
                    self._send(200, server.answer(self.path, body))
                finally:
                    server._end()

            def _stream(self, body: dict[str, Any]) -> None:
                self.close_connection = True  # the reply's end is the connection's
                self.send_response(200)
                self.send_header("content-type", "text/event-stream")
                self.end_headers()
                events = server.stream_events(self.path, body)
                sent = 0
                try:
                    for event in events:
                        if sent and server.stream_delay_s:
                            time.sleep(server.stream_delay_s)
                        self.wfile.write(event)
                        self.wfile.flush()
                        sent += 1
                except OSError:  # the client hung up: the model stops here
                    with server._lock:
                        server.stats.streams_cut.append(sent)
                    return
                with server._lock:
                    server.stats.streams_done += 1

            def _send(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
                self._send_raw(status, json.dumps(payload).encode(), headers)

            def _send_raw(self, status: int, data: bytes, headers: dict[str, str] | None = None) -> None:
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(data)

        self._server = _QuietServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def serve(self) -> None:
        print(self._server.server_address[1], flush=True)
        self._server.serve_forever()

    def _saw(self, path: str, headers: Any) -> None:
        """A GET, recorded as a POST is: its raw path (with keep_bodies) and any key it carried."""
        with self._lock:
            if self.keep_bodies:
                self.stats.paths.append(path)
            for name in ("authorization", "x-api-key"):
                if headers.get(name):
                    self.stats.auth.add(headers[name])

    def _begin(self, headers: Any, body: Any, path: str = "") -> str | None:
        with self._lock:
            if self.keep_bodies:
                self.stats.paths.append(path)
            self.stats.requests += 1
            self.stats.in_flight += 1
            self.stats.max_in_flight = max(self.stats.max_in_flight, self.stats.in_flight)
            self.stats.arrivals_in_flight.append(self.stats.in_flight)
            for name in ("authorization", "x-api-key"):
                if headers.get(name):
                    self.stats.auth.add(headers[name])
            if self.keep_bodies:
                self.stats.bodies.append(body)
            fault = None
            draw = self._random.random()
            body_key = json.dumps(body, sort_keys=True)
            if not self.faults.first_attempts_only or body_key not in self._seen:
                self._seen.add(body_key)
                for name in ("rate_limit", "server_error", "slow", "drop", "malformed", "bad_gateway"):
                    chance = getattr(self.faults, name)
                    if draw < chance:
                        fault = name
                        break
                    draw -= chance
            if self.stats.requests <= self.faults.fail_first:
                fault = "fail_first"
            if self.faults.max_in_flight is not None and self.stats.in_flight > self.faults.max_in_flight:
                fault = "busy"
            rows = rows_of(body)
            if self.faults.max_rows is not None and rows is not None and rows > self.faults.max_rows:
                fault = "too_large"
            if fault:
                self.stats.faults[fault] += 1
            return fault

    def _end(self) -> None:
        with self._lock:
            self.stats.in_flight -= 1

    def answer(self, path: str, body: dict[str, Any]) -> Any:
        if path.endswith("/chat/completions"):
            prompt = body["messages"][-1]["content"]
            fmt = body.get("response_format")
            schema = (fmt or {}).get("schema") or ((fmt or {}).get("json_schema") or {}).get("schema")
            if "\nItems:\n" in prompt:  # an AI aggregate: a short answer, so stages can combine it
                content = f"summary of {prompt.count(chr(10) + '- ')} items"
            elif schema and set(schema.get("properties", {})) - {"echo", "length"}:
                content = json.dumps(_instance(schema, prompt.rpartition("Text: ")[2]))
            else:
                content = json.dumps({"echo": prompt, "length": len(prompt)}) if fmt else f"echo: {prompt}"
            self._count(1)
            return {
                "choices": [{"index": 0, "message": {"role": "assistant", "content": content}}],
                "usage": {"prompt_tokens": len(prompt.split()), "completion_tokens": len(content.split())},
            }
        if path.endswith("/completions"):
            self._count(1)
            return {"choices": [{"text": f"echo: {body['prompt']}"}], "usage": {"prompt_tokens": 1}}
        if path.endswith("/embeddings"):
            texts = body["input"]
            self._count(len(texts))
            return {
                "data": [{"index": i, "embedding": [float(len(t)), 1.0]} for i, t in enumerate(texts)],
                "usage": {"prompt_tokens": len(texts)},
            }
        if path.endswith("/v1/messages"):
            prompt = body["messages"][-1]["content"]
            self._count(1)
            text = json.dumps({"echo": prompt}) if "JSON" in body.get("system", "") else f"echo: {prompt}"
            return {
                "id": "msg_1",
                "type": "message",
                "role": "assistant",
                "content": [{"type": "text", "text": text}],
                "usage": {"input_tokens": 3, "output_tokens": 2},
            }
        if path.endswith("/invocations"):
            split = body.get("dataframe_split")
            rows = [r[0] for r in split["data"]] if split else body.get("inputs", [])
            self._count(len(rows))
            return {"predictions": [2 * r for r in rows]}
        return {"error": f"unknown path {path}"}

    def stream_events(self, path: str, body: dict[str, Any]) -> list[bytes]:
        """A streamed answer as SSE events: OpenAI's chunks (usage last when `stream_options.include_usage`
        asks), or the Messages API's events; the text is the answer `answer` gives, in `stream_pieces` pieces."""
        answer = self.answer(path, {k: v for k, v in body.items() if k != "stream"})
        messages = path.endswith("/v1/messages")
        if messages:
            text = "".join(b["text"] for b in answer["content"])
        else:
            choice = answer["choices"][0]
            text = choice["message"]["content"] if "message" in choice else choice["text"]
        n = max(1, min(self.stream_pieces, len(text)))
        pieces = [text[i * len(text) // n : (i + 1) * len(text) // n] for i in range(n)]

        def event(data: Any, name: str | None = None) -> bytes:
            return (f"event: {name}\n" if name else "").encode() + f"data: {json.dumps(data)}\n\n".encode()

        if messages:
            usage = answer["usage"]
            return [
                event({"type": "message_start", "message": {"usage": {"input_tokens": usage["input_tokens"]}}},
                      "message_start"),
                *(event({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": p}},
                        "content_block_delta") for p in pieces),
                event({"type": "message_delta", "usage": {"output_tokens": usage["output_tokens"]}}, "message_delta"),
                event({"type": "message_stop"}, "message_stop"),
            ]  # fmt: skip
        chat = path.endswith("/chat/completions")
        chunks = [
            {"choices": [{"index": 0, "delta": {"content": p}} if chat else {"index": 0, "text": p}]}
            for p in pieces
        ]
        chunks.append({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
        if (body.get("stream_options") or {}).get("include_usage"):
            chunks.append({"choices": [], "usage": answer.get("usage")})
        return [event(c) for c in chunks] + [b"data: [DONE]\n\n"]

    def _count(self, rows: int) -> None:
        with self._lock:
            self.stats.rows += rows


class FakeServer:
    """The server in a child process; `stats` asks it what it has seen."""

    def __init__(
        self,
        *,
        delay_s: float = 0.0,
        faults: Faults | None = None,
        keep_bodies: bool = False,
        capacity: int | None = None,
        stream_pieces: int = 8,
        stream_delay_s: float = 0.0,
    ) -> None:
        self._config = {
            "delay_s": delay_s,
            "faults": asdict(faults or Faults()),
            "keep_bodies": keep_bodies,
            "capacity": capacity,
            "stream_pieces": stream_pieces,
            "stream_delay_s": stream_delay_s,
        }
        self._process: subprocess.Popen[str] | None = None
        self._final: Stats | None = None
        self.url = ""

    def __enter__(self) -> FakeServer:
        self._process = subprocess.Popen(
            [sys.executable, __file__, json.dumps(self._config)], stdout=subprocess.PIPE, text=True
        )
        assert self._process.stdout is not None
        port = self._process.stdout.readline().strip()
        if not port:
            raise RuntimeError("the fake server did not start")
        self.url = f"http://127.0.0.1:{port}"
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._process is not None:
            self._final = self.stats  # what it saw, readable after it is gone
            self._process.terminate()
            self._process.wait(timeout=10)
            if self._process.stdout is not None:
                self._process.stdout.close()

    def settled(self, timeout_s: float = 10.0) -> Stats:
        """The stats once nothing is in flight: a client killed mid-request leaves requests the server is
        still answering, and counting them later would charge them to whoever asks next."""
        deadline = time.monotonic() + timeout_s
        stats = self.stats
        while stats.in_flight and time.monotonic() < deadline:
            time.sleep(0.02)
            stats = self.stats
        assert not stats.in_flight, f"the server still answers {stats.in_flight} requests"
        return stats

    @property
    def stats(self) -> Stats:
        import httpx

        if self._final is not None:
            return self._final
        data = httpx.get(self.url + "/__stats", timeout=10).json()
        return Stats(
            requests=data["requests"],
            rows=data["rows"],
            faults=Counter(data["faults"]),
            auth=set(data["auth"]),
            bodies=data["bodies"],
            max_in_flight=data["max_in_flight"],
            in_flight=data["in_flight"],
            arrivals_in_flight=data["arrivals_in_flight"],
            paths=data.get("paths", []),
            streams_done=data.get("streams_done", 0),
            streams_cut=data.get("streams_cut", []),
        )


def rows_of(body: Any) -> int | None:
    """Rows of an MLflow `/invocations` body (None for other bodies)."""
    if not isinstance(body, dict):
        return None
    if "dataframe_split" in body:
        return len(body["dataframe_split"].get("data", []))
    for key in ("inputs", "instances", "dataframe_records"):
        if isinstance(body.get(key), list):
            return len(body[key])
    return None


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextlib.contextmanager
def running(
    command: list[str], ready_url: str, log_path: Any, env: dict[str, str] | None = None, verify: Any = True
) -> Iterator[None]:
    """Start a real server process, wait until `ready_url` answers 200, and stop it (and its children) after."""
    import httpx

    log = open(log_path, "w")  # noqa: SIM115 - closed in the finally below
    process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(ready_url, timeout=1, verify=verify).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{command[2:4]} did not start; see {log_path}")
            time.sleep(0.5)
        yield
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=30)
        log.close()


def _instance(schema: dict[str, Any], text: str) -> Any:
    """A reply that follows a task function's JSON schema, decided by the text (as a model would, simply):
    an enum takes the first of its values the text mentions; a list of strings, the text's words with '@'."""
    kind = schema.get("type")
    if "enum" in schema:
        return next((v for v in schema["enum"] if v.lower() in text.lower()), schema["enum"][0])
    if kind == "object":
        return {name: _instance(field, text) for name, field in schema.get("properties", {}).items()}
    if kind == "array":
        items = schema.get("items", {})
        if "enum" in items:
            return [v for v in items["enum"] if v.lower() in text.lower()] or items["enum"][:1]
        return [word.strip(".,") for word in text.split() if "@" in word]
    if kind == "integer":
        return len(text)
    if kind == "number":
        return len(text) / 2
    if kind == "boolean":
        return True
    return text[:20]


def smollm2_gguf() -> Path:
    from aifuncs.providers.llama_cpp import smollm2_file

    return smollm2_file()


@contextlib.contextmanager
def llama_cpp_server(log_dir: Path, alias: str = "smollm2") -> Iterator[str]:
    """A real OpenAI-compatible server (llama-cpp-python) with SmolLM2; yields its base URL (up to /v1)."""
    port = free_port()
    command = [sys.executable, "-m", "llama_cpp.server", "--model", str(smollm2_gguf()), "--host", "127.0.0.1",
               "--port", str(port), "--n_ctx", "2048", "--model_alias", alias]  # fmt: skip
    url = f"http://127.0.0.1:{port}/v1"
    with running(command, url + "/models", log_dir / "llama-server.log"):
        yield url


if __name__ == "__main__":
    config = json.loads(sys.argv[1])
    _Server(
        delay_s=config["delay_s"],
        faults=Faults(**config["faults"]),
        keep_bodies=config["keep_bodies"],
        capacity=config["capacity"],
        stream_pieces=config.get("stream_pieces", 8),
        stream_delay_s=config.get("stream_delay_s", 0.0),
    ).serve()


# A process that says "ready" once its limiter is open and warm, then hammers one limit in the window it is
# sent on stdin: the window opens after every process is ready, however late a loaded machine started them.
HAMMER = """
import json, sys, time
from pathlib import Path
from aifuncs.governance.limits import RateLimit, Reservation, applicable, open_limiter
from aifuncs.governance.principals import Principal
path, per_minute, burst = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
limiter = open_limiter(path)  # the file, or the database AIFUNCS_DATABASE_URL names
checks = applicable("ep", [RateLimit("endpoint", calls=per_minute, burst=burst)], Principal("p", "user"), ())
limiter.try_acquire(applicable("warm", [RateLimit("endpoint", calls=1)], Principal("p", "user"), ()), 0)
print("ready", flush=True)
start, stop = map(float, sys.stdin.readline().split())
while time.time() < start:
    time.sleep(0.001)
admitted, asked, first, last = 0, 0, None, None
while (asked_at := time.time()) < stop:
    asked += 1
    if isinstance(limiter.try_acquire(checks, 0), Reservation):
        admitted += 1
        first = first or asked_at
        last = time.time()
print(json.dumps({"admitted": admitted, "asked": asked, "first": first, "last": last, "stop": stop}))
"""


def hammer_limiter(
    path: Path, seconds: float, per_minute: int, burst: int, database: str | None = None
) -> list[dict[str, float]]:
    """Four processes asking one limit as fast as they can for `seconds`, from the same instant: on the file
    at `path`, or on the shared `database`, each then with a home of its own (four hosts)."""
    env = {k: v for k, v in os.environ.items() if k != "AIFUNCS_DATABASE_URL"}
    if database is not None:
        env["AIFUNCS_DATABASE_URL"] = database
    workers = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                HAMMER,
                str(path if database is None else path.parent / f"host-{number}" / path.name),
                str(per_minute),
                str(burst),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        for number in range(4)
    ]
    try:
        for worker in workers:
            assert worker.stdout is not None and worker.stdout.readline().strip() == "ready"
        start = time.time() + 0.2  # every process is waiting for this line already
        for worker in workers:
            assert worker.stdin is not None
            worker.stdin.write(f"{start} {start + seconds}\n")
            worker.stdin.flush()
        return [json.loads(w.communicate(timeout=120)[0]) for w in workers]
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
                worker.wait()
