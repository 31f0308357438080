"""One model worker process as the server sees it: started, loaded, asked one batch at a time, stopped.

The worker is a fresh interpreter (`python -m aifuncs.workers._child`), never a fork of the server, whose
threads (event loop, store writers) a fork would copy half-way. It shares nothing with the server but one
socket pair: when it dies, reading its socket ends, and whatever it was answering is known to be lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pickle
import signal
import socket
import sys
import time
from collections.abc import Callable
from typing import Any

from aifuncs._endpoint import Endpoint
from aifuncs.providers.base import CallOptions
from aifuncs.workers._wire import decode_output, frame, read_frame, rows_to_ipc

_NATIVE_THREADS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


class WorkerLost(Exception):
    """The worker died, or was killed for taking too long, before it answered."""


class LoadFailed(Exception):
    """The worker could not load the model; the message says why (the model's own error)."""


class ModelFailed(Exception):
    """The model raised on a batch and could not send its exception back as it was."""


class StreamLost(WorkerLost):
    """The worker died, or went silent too long, while streaming: `pieces` had reached the caller by then."""

    def __init__(self, message: str, pieces: int) -> None:
        super().__init__(message)
        self.pieces = pieces


class Worker:
    """A worker process and its end of the socket pair; `call` is awaited by one batch at a time."""

    def __init__(self, ordinal: int) -> None:
        self.ordinal = ordinal
        self.pid: int | None = None
        self.process: asyncio.subprocess.Process | None = None
        self.ready = False
        self.busy = False
        self.idle_since = time.monotonic()
        self.stopping = False
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._sent = 0  # requests sent: a stop names the one streaming

    async def start(self, endpoint: Endpoint, threads: int | None, load_timeout_s: float) -> float:
        """Start the process and load the model: the load's seconds, else `LoadFailed`."""
        ours, theirs = socket.socketpair()
        env = dict(os.environ)
        # The server's own import path: a python endpoint's module the server imports, its workers import too
        # (the server may have been started with its folder on sys.path rather than on PYTHONPATH).
        given = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
        here = [p or os.getcwd() for p in sys.path if not p or os.path.isdir(p)]
        env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys([*given, *here]))
        if threads is not None:  # several workers share the cores: each gets its part of them
            for name in _NATIVE_THREADS:
                env.setdefault(name, str(threads))
        try:
            self.process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "aifuncs.workers._child", str(theirs.fileno()), str(os.getpid()),
                pass_fds=(theirs.fileno(),), env=env, stdin=asyncio.subprocess.DEVNULL,
            )  # fmt: skip
        finally:
            theirs.close()
        self.pid = self.process.pid
        self._reader, self._writer = await asyncio.open_unix_connection(sock=ours)
        hello = {"name": endpoint.name, "kind": endpoint.kind, "options": dict(endpoint.options),
                 "version": endpoint.version}  # fmt: skip
        try:
            self._writer.writelines(frame(hello))
            header, _ = await asyncio.wait_for(read_frame(self._reader), load_timeout_s)
        except TimeoutError:
            self.kill()
            raise LoadFailed(f"the model did not load within load_timeout_s ({load_timeout_s:g} s)") from None
        except (asyncio.IncompleteReadError, ConnectionError):
            code = await self._exit_code()
            raise LoadFailed(
                f"the worker process exited while loading the model (exit code {code})"
            ) from None
        if not header["ok"]:
            self.kill()
            raise LoadFailed(header.get("message") or "the model failed to load")
        self.ready = True
        self.idle_since = time.monotonic()
        return float(header["load_s"])

    async def call(self, rows: Any, options: CallOptions, chunked: bool, timeout_s: float) -> Any:
        """The model's answer to one batch: its output, or the model's own exception raised here;
        `WorkerLost` when the worker died or took longer than `timeout_s` (it is killed then)."""
        assert self._reader is not None and self._writer is not None
        self._sent += 1
        header = {"options": options, "chunked": chunked, "id": self._sent}
        try:
            self._writer.writelines(frame(header, rows_to_ipc(rows)))
            reply, body = await asyncio.wait_for(read_frame(self._reader), timeout_s)
        except TimeoutError:
            self.kill()
            raise WorkerLost(
                f"its model worker took longer than worker_timeout_s ({timeout_s:g} s)"
            ) from None
        except (asyncio.IncompleteReadError, ConnectionError):
            self.ready = False
            code = await self._exit_code()
            raise WorkerLost(f"its model worker died while answering (exit code {code})") from None
        if reply["ok"]:
            output = decode_output(reply["shape"], body)
            tokens = reply.get("tokens")
            if tokens is not None:
                from aifuncs.providers.base import Prediction

                return Prediction(output, tokens[0], tokens[1])
            return output
        if reply.get("error") is not None:
            raise pickle.loads(reply["error"])
        raise ModelFailed(reply.get("message") or "the model failed")

    async def stream(
        self, rows: Any, options: CallOptions, timeout_s: float, hand_on: Callable[[str], None]
    ) -> tuple[tuple[int | None, int | None], bool]:
        """One row's answer as the model writes it: each piece handed on as it comes; the tokens used once it
        ends, and whether `stop_stream` ended it. The model's own exception is raised here; `StreamLost` when the worker
        died or wrote nothing for `timeout_s` (it is killed then)."""
        assert self._reader is not None and self._writer is not None
        self._sent += 1
        pieces = 0
        try:
            self._writer.writelines(frame({"options": options, "chunked": False, "stream": True, "id": self._sent},
                                          rows_to_ipc(rows)))  # fmt: skip
            while True:
                reply, _ = await asyncio.wait_for(read_frame(self._reader), timeout_s)
                if "piece" not in reply:
                    break
                pieces += 1
                hand_on(reply["piece"])
        except TimeoutError:
            self.kill()
            raise StreamLost(
                f"its model worker wrote nothing for worker_timeout_s ({timeout_s:g} s)", pieces
            ) from None
        except (asyncio.IncompleteReadError, ConnectionError):
            self.ready = False
            code = await self._exit_code()
            raise StreamLost(f"its model worker died while streaming (exit code {code})", pieces) from None
        if reply["ok"]:
            tokens = reply.get("tokens") or (None, None)
            return (tokens[0], tokens[1]), bool(reply.get("stopped"))
        if reply.get("error") is not None:
            raise pickle.loads(reply["error"])
        raise ModelFailed(reply.get("message") or "the model failed")

    def stop_stream(self) -> None:
        """Ask the worker to stop the answer it streams (its caller went away): the model stops at its next
        token and the stream ends there."""
        if self._writer is not None and not self._writer.is_closing():
            self._writer.writelines(frame({"stop": self._sent}))

    async def _exit_code(self) -> int | None:
        if self.process is None:
            return None
        with contextlib.suppress(TimeoutError):
            return await asyncio.wait_for(self.process.wait(), 5)
        return None

    def kill(self) -> None:
        """End the process at once (a hung model does not answer a polite request)."""
        self.ready = False
        if self.process is not None and self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signal.SIGKILL)
        if self._writer is not None:
            self._writer.close()

    async def stop(self) -> None:
        """Release an idle worker: closing its socket ends its loop; killed if it lingers."""
        self.ready = False
        self.stopping = True
        if self._writer is not None:
            self._writer.close()
        if self.process is not None:
            try:
                await asyncio.wait_for(self.process.wait(), 5)
            except TimeoutError:
                self.kill()
                await self.process.wait()
