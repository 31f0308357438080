"""One background event loop per process; every model call runs on it."""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

from aifuncs._fork import leave_behind

T = TypeVar("T")


class BackgroundLoop:
    """An asyncio loop on a daemon thread. `run` may be called from any thread but the loop's own."""

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock = threading.Lock()
        self._pid = os.getpid()

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        if self._pid != os.getpid():  # forked: the loop's thread stayed in the parent
            leave_behind(self._loop)
            self._lock, self._loop, self._pid = threading.Lock(), None, os.getpid()
        with self._lock:
            if self._loop is None or self._loop.is_closed():
                loop = asyncio.new_event_loop()
                thread = threading.Thread(target=loop.run_forever, name="aifuncs-runtime", daemon=True)
                thread.start()
                self._loop = loop
            return self._loop

    def adopt(self, loop: asyncio.AbstractEventLoop) -> bool:
        """Make `loop` (running on the calling thread, e.g. a server's) this process's runtime loop, unless
        one runs already: a server's requests then reach the runtime without a hop between threads (two GIL
        handoffs a request, which cost more than the work on a busy 2-core machine). True if adopted."""
        with self._lock:
            if self._pid == os.getpid() and self._loop is not None and not self._loop.is_closed():
                return self._loop is loop
            self._loop, self._pid = loop, os.getpid()
            return True

    def running_here(self) -> bool:
        """Whether the caller is on the runtime loop's own thread, inside it."""
        try:
            return asyncio.get_running_loop() is self._loop
        except RuntimeError:
            return False

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        if self.running_here():
            coroutine.close()
            raise RuntimeError(
                "A blocking runtime call on the runtime's own loop would wait forever: await it."
            )
        return self.submit(coroutine).result()

    def submit(self, coroutine: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop)
