"""How a run ended: its exit code from the error that ended it, the error in words, and SIGTERM as a stop a
rerun resumes from."""

from __future__ import annotations

import os
import re
import signal
import threading
from collections.abc import Callable
from enum import IntEnum
from typing import Any

import duckdb
import sqlglot

from aifuncs import errors
from aifuncs.errors import (
    AifuncsError,
    ArgumentError,
    BudgetExceeded,
    EndpointUnreachable,
    Interrupted,
    RequestMismatch,
    SqlError,
    UnknownEndpoint,
)


class Exit(IntEnum):
    """How a run ended, as the process exit code of `aifuncs run`."""

    OK = 0
    ERROR = 1  # the job failed for another reason (a model error with failOnError, a DuckDB error...)
    USAGE = 2  # bad command-line arguments
    BUDGET = 3  # a budget refused or stopped the job: rerun with a larger one to finish (nothing paid twice)
    FAILED_ROWS = 4  # the job finished, but more rows failed than --max-failed-rows allows
    UNREACHABLE = 5  # an endpoint did not answer at all (refused, dropped, timed out): retry later
    BAD_SQL = 6  # the job's SQL does not parse or bind (unknown table, endpoint, function argument...)
    LOCKED = 7  # another run of the same job is still running: this one did nothing
    INTERRUPTED = 8  # stopped by SIGTERM: a rerun resumes from the checkpoint


_BUDGET_TEXT = re.compile(r"The (query|session|job) budget")
_UNREACHABLE_TEXT = re.compile(r"Endpoint '[^']+': (connection to \S+ failed|no reply from)")
_BAD_SQL = (SqlError, ArgumentError, UnknownEndpoint, RequestMismatch, sqlglot.errors.SqlglotError)
_BAD_SQL_DUCKDB = (duckdb.ParserException, duckdb.BinderException, duckdb.CatalogException)


STATUS = {Exit.OK: "succeeded", Exit.INTERRUPTED: "interrupted"}


class Stop:
    """While a run goes on, SIGTERM ends it as a failure would (`Interrupted`, which DuckDB may wrap): its
    counts, ledger row and summary are written, its answers kept for a rerun. Only the main thread can.

    Python runs a signal's handler in the main thread only, and only once it is back in Python: while DuckDB
    runs a statement it may not be for as long as the statement lasts, and the calls it handed over go on
    sending. So the signal also wakes a thread of its own (through the wakeup fd, written by the C handler at
    once), which calls `on_stop` (the run cancels its outstanding calls) right away."""

    def __init__(self) -> None:
        self.told = False
        self.on_stop: Callable[[], None] | None = None
        self._previous: Any = None
        self._previous_fd = -1
        self._pipe: tuple[int, int] | None = None
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._stop)
            self._pipe = os.pipe()
            os.set_blocking(self._pipe[1], False)
            self._previous_fd = signal.set_wakeup_fd(self._pipe[1], warn_on_full_buffer=False)
            self._closing = False
            self._watcher = threading.Thread(
                target=self._watch, args=(self._pipe[0],), name="aifuncs-job-stop", daemon=True
            )
            self._watcher.start()

    def _watch(self, fd: int) -> None:
        while not self._closing:
            got = os.read(fd, 64)
            if not got or self._closing:
                return
            if signal.SIGTERM in got:
                self.told = True
                if self.on_stop is not None:
                    self.on_stop()
                return

    def _stop(self, signum: int, frame: Any) -> None:
        self.told = True
        raise Interrupted("The run was stopped (SIGTERM) before it finished; run it again to resume.")

    def restore(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None
        if self._pipe is not None:
            signal.set_wakeup_fd(self._previous_fd)
            self._closing = True
            os.write(self._pipe[1], b"\0")  # wakes the watcher, which sees it is done
            self._watcher.join(timeout=5)
            for fd in self._pipe:
                os.close(fd)
            self._pipe = None


def exit_code(error: BaseException) -> Exit:
    chain = _chain(error)
    text = in_words(error)
    if any(isinstance(e, BudgetExceeded) for e in chain) or _BUDGET_TEXT.search(text):
        return Exit.BUDGET
    if any(isinstance(e, EndpointUnreachable) for e in chain) or _UNREACHABLE_TEXT.search(text):
        return Exit.UNREACHABLE
    if any(isinstance(e, _BAD_SQL) for e in chain) or isinstance(error, _BAD_SQL_DUCKDB):
        return Exit.BAD_SQL
    return Exit.ERROR


def _chain(error: BaseException) -> list[BaseException]:
    found: list[BaseException] = []
    current: BaseException | None = error
    while current is not None and current not in found:
        found.append(current)
        current = current.__cause__ or current.__context__
    return found


_UDF_WRAPPING = re.compile(
    r"^Invalid Input Error: (Python exception occurred while executing the UDF: )?(?P<kind>\w+): "
)


def in_words(error: BaseException) -> str:
    """The failure in words: aifuncs' own message where there is one, without DuckDB's wrapping."""
    ours = next((e for e in _chain(error) if isinstance(e, AifuncsError)), None)
    if ours is not None:
        return str(ours)
    text = str(error)
    wrapped = _UDF_WRAPPING.match(text)  # a UDF's error, raised inside DuckDB: its type is lost
    if wrapped and isinstance(getattr(errors, wrapped["kind"], None), type):
        return text[wrapped.end() :]
    return text.replace("Python exception occurred while executing the UDF: ", "")
