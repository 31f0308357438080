"""Run a function in a forked child process, as multiprocessing's default start method does on Linux."""

from __future__ import annotations

import os
import time
from collections.abc import Callable


def in_a_forked_child(body: Callable[[], object], timeout_s: float = 20.0) -> int:
    """Run `body()` in a forked child: its exit status (0: it returned, 1: it raised), or -1 if it hung."""
    pid = os.fork()
    if pid == 0:  # the child: never return into pytest
        code = 1
        try:
            body()
            code = 0
        finally:
            os._exit(code)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.02)
    os.kill(pid, 9)
    os.waitpid(pid, 0)
    return -1
