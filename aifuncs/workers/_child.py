"""A model worker process: `python -m aifuncs.workers._child FD`, FD one end of a socket pair.

It reads the endpoint version from the first frame, loads the model (reporting `ready` with the load time,
or `failed` with why), then answers one batch at a time until the server closes the socket. A failure of the
model on a batch is that batch's answer (the exception itself, sent back); the worker goes on.
"""

from __future__ import annotations

import asyncio
import os
import pickle
import signal
import socket
import sys
import time
from typing import Any

from aifuncs.workers._wire import encode_output, read_frame_blocking, rows_from_ipc, send_blocking


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


def main(fd: int) -> None:
    signal.signal(
        signal.SIGINT, signal.SIG_IGN
    )  # a Ctrl-C in the server's terminal is the server's to handle
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
    while (message := read_frame_blocking(stream)) is not None:
        header, body = message
        try:
            rows = rows_from_ipc(body, header["chunked"])
            options = header["options"]
            if provider.blocking:
                output = provider.predict_blocking(rows, options)
            else:
                output = loop.run_until_complete(provider.predict(rows, options))
            tokens = None
            if isinstance(output, Prediction):
                tokens = (output.input_tokens, output.output_tokens)
                output = output.outputs
            shape, encoded = encode_output(output)
        except Exception as error:
            send_blocking(sock, _failure(error))
            continue
        send_blocking(sock, {"ok": True, "shape": shape, "tokens": tokens}, encoded)


if __name__ == "__main__":
    try:
        main(int(sys.argv[1]))
    except (BrokenPipeError, ConnectionError):
        pass  # the server is gone (stopped, or killed): nobody is left to answer
