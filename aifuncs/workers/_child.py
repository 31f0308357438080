"""A model worker process: `python -m aifuncs.workers._child FD`, FD one end of a socket pair.

It reads the endpoint version from the first frame, loads the model (reporting `ready` with the load time,
or `failed` with why), then answers one request at a time until the server closes the socket. A failure of the
model on a batch is that batch's answer (the exception itself, sent back); the worker goes on.

A streamed request (`stream` in its header; kinds that write token by token, llama_cpp) is answered as one
frame a piece, then a last frame with the tokens used. The server may send `stop` meanwhile (its caller went
away): the model stops at its next token and the last frame says so. A reader thread takes the server's
frames as they come, so a stop is seen while the model writes.
"""

from __future__ import annotations

import asyncio
import os
import pickle
import queue
import signal
import socket
import sys
import threading
import time
from typing import Any

from aifuncs.workers._wire import encode_output, read_frame_blocking, rows_from_ipc, send_blocking

_PARENT_POLL_S = 0.5  # how soon a worker notices its server is gone


def _load(provider: Any) -> None:
    """Load the model now, not on the first request (the reason the worker exists)."""
    from aifuncs.providers.python import PythonProvider, load_function

    if isinstance(provider, PythonProvider):
        load_function(provider.options.function)
    elif callable(getattr(provider, "model", None)):
        provider.model()


def _failure(error: BaseException) -> dict[str, Any]:
    """The exception itself where it survives pickling, else its type and message."""
    try:
        pickled = pickle.dumps(error, protocol=pickle.HIGHEST_PROTOCOL)
        pickle.loads(pickled)
        return {"ok": False, "error": pickled}
    except Exception:
        return {"ok": False, "error": None, "message": f"{type(error).__name__}: {error}"}


class _Inbox:
    """The server's frames, read by a thread: requests queued in order (None at the end), each with the event
    a `stop` naming it sets."""

    def __init__(self, stream: Any, busy: threading.Event) -> None:
        self.requests: queue.Queue[tuple[dict[str, Any], bytes, threading.Event] | None] = queue.Queue()
        self._stream = stream
        self._latest: tuple[Any, threading.Event] | None = None
        self._busy = busy
        threading.Thread(target=self._read, name="aifuncs-worker-inbox", daemon=True).start()

    def _read(self) -> None:
        try:
            while (message := read_frame_blocking(self._stream)) is not None:
                header, body = message
                if "stop" in header:  # one request is answered at a time: a stop names the latest or none
                    if self._latest is not None and self._latest[0] == header["stop"]:
                        self._latest[1].set()
                    continue
                stop = threading.Event()
                self._latest = (header.get("id"), stop)
                self.requests.put((header, body, stop))
        except (OSError, ValueError):
            pass  # the socket closed under the read: the server is gone
        if self._latest is not None:
            self._latest[1].set()  # nobody is left to read what the model writes
        self.requests.put(None)
        if self._busy.is_set():  # a model that never returns must not keep an orphan alive
            os._exit(0)


async def _stream(provider: Any, sock: socket.socket, rows: Any, options: Any, stop: threading.Event) -> None:
    """One streamed answer, a frame a piece, then its tokens; stopped at the next piece once asked."""
    from aifuncs.providers.base import Prediction

    pieces = provider.stream(rows, options)
    used, sent, stopped = Prediction(None), 0, False
    try:
        async for piece in pieces:
            if isinstance(piece, Prediction):
                used = piece
                continue
            if stop.is_set():
                stopped = True
                break
            send_blocking(sock, {"piece": piece})
            sent += 1
    finally:
        await pieces.aclose()  # the model's thread is stopped and joined: the worker is free again
    send_blocking(
        sock, {"ok": True, "end": True, "tokens": (used.input_tokens, used.output_tokens), "pieces": sent,
               "stopped": stopped or stop.is_set()},
    )  # fmt: skip


def _exit_with(parent: int) -> None:
    """End this process once the server that started it is gone, whatever the model is doing: a server killed
    outright (SIGKILL, out of memory) runs no cleanup, and its workers would live on as orphans (a model loading
    or stuck in a batch never reads the closed socket). The parent is polled: a worker is re-parented then."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(_PARENT_POLL_S)
        os._exit(0)

    threading.Thread(target=watch, name="aifuncs-worker-parent", daemon=True).start()


def main(fd: int, parent: int | None = None) -> None:
    signal.signal(
        signal.SIGINT, signal.SIG_IGN
    )  # a Ctrl-C in the server's terminal is the server's to handle
    if parent is not None:
        _exit_with(parent)
    sock = socket.socket(fileno=fd)
    stream = sock.makefile("rb")
    first = read_frame_blocking(stream)
    if first is None:
        return
    header, _ = first
    from aifuncs._endpoint import Endpoint
    from aifuncs.providers import provider_class
    from aifuncs.providers.base import Prediction

    began = time.perf_counter()
    try:
        endpoint = Endpoint(header["name"], header["kind"], header["options"], version=header["version"])
        provider = provider_class(endpoint.kind)(endpoint)
        _load(provider)
    except BaseException as error:
        send_blocking(sock, {**_failure(error), "message": f"{type(error).__name__}: {error}"})
        return
    send_blocking(sock, {"ok": True, "load_s": time.perf_counter() - began, "pid": os.getpid()})
    loop = asyncio.new_event_loop()
    busy = threading.Event()
    inbox = _Inbox(stream, busy)
    while (message := inbox.requests.get()) is not None:
        header, body, stop = message
        busy.set()
        try:
            rows = rows_from_ipc(body, header["chunked"])
            options = header["options"]
            if header.get("stream"):
                loop.run_until_complete(_stream(provider, sock, rows, options, stop))
                continue
            if provider.blocking:
                output = provider.predict_blocking(rows, options)
            else:
                output = loop.run_until_complete(provider.predict(rows, options))
            tokens = None
            if isinstance(output, Prediction):
                tokens = (output.input_tokens, output.output_tokens)
                output = output.outputs
            shape, encoded = encode_output(output)
        except (BrokenPipeError, ConnectionError):
            raise
        except Exception as error:
            send_blocking(sock, _failure(error))
            continue
        finally:
            busy.clear()
        send_blocking(sock, {"ok": True, "shape": shape, "tokens": tokens}, encoded)


if __name__ == "__main__":
    try:
        main(int(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else None)
    except (BrokenPipeError, ConnectionError):
        pass  # the server is gone (stopped, or killed): nobody is left to answer
