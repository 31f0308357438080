"""Fork a child as multiprocessing's default start method does on Linux, in a fresh interpreter: forking the
test process itself (DuckDB's and pyarrow's threads running) can crash the child in their code, not ours."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

_RUNNER = """
import os, sys, time
def in_a_forked_child(body, timeout_s=20.0):
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            body()
            code = 0
        except BaseException as error:
            print("child:", repr(error), file=sys.stderr, flush=True)
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

def held_in_a_thread(lock, seconds=0.3):
    # A thread holds `lock` for `seconds`, as a writer of ours does mid-write; returns once it holds it.
    import threading
    holding = threading.Event()

    def hold():
        with lock:
            holding.set()
            time.sleep(seconds)

    thread = threading.Thread(target=hold)
    thread.start()
    holding.wait()
    return thread
"""


def run_forking(script: str, timeout_s: float = 60.0) -> subprocess.CompletedProcess[str]:
    """Run `script` in a new interpreter where `in_a_forked_child(body)` gives the child's exit status
    (0: body returned, 1: it raised, -1: it hung) and `held_in_a_thread(lock)` keeps a lock busy."""
    return subprocess.run(
        [sys.executable, "-c", _RUNNER + textwrap.dedent(script)],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        env=os.environ.copy(),
    )
