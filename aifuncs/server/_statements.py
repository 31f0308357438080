"""SQL over HTTP: Databricks' Statement Execution API running `aifuncs.sql` on the server's warehouse.

Each statement runs in a sandboxed DuckDB database of its own (`_sandbox.py`): the warehouse read-only, a
memory limit, a private temp folder, no other file. Its AI functions are bound to the caller's principal, so
the policy check, limits, guardrails and logs hold as in SQL anywhere.

Statements run on a small pool of their own threads, shared fairly between principals (`_fair.py`), never
the request threads: a request waiting for its answer (`wait_timeout`, 10 s by default, at most 50 s) waits
on the event loop and holds no thread. Each statement is bounded: a time limit from its submission (it is
interrupted then, CANCELED with DEADLINE_EXCEEDED), a cap on the statements one principal may have pending or
running (429 beyond it), and results read only up to `row_limit`/`byte_limit` and the server's result cap. A
finished statement's result is kept for `kept_s` (and within a principal's share of memory, oldest closed
first), then CLOSED; statements are visible only to whoever ran them (anyone else reads a missing one). With
`--workers` above 1 a client should wait for its answer in the first request, since a poll may reach another
process.
"""

from __future__ import annotations

import asyncio
import logging
import re
import threading
import time
import uuid
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb

from aifuncs.engines.duckdb import sql
from aifuncs.errors import AifuncsError
from aifuncs.governance import Identity
from aifuncs.jobs._params import markers, substitute
from aifuncs.server._errors import ApiError
from aifuncs.server._fair import FairPool
from aifuncs.server._results import Result, collect
from aifuncs.server._sandbox import DIALECTS, Limits, Sandbox, refuse_reserved
from aifuncs.session import Session

__all__ = ["Limits", "Statements"]

_log = logging.getLogger("aifuncs.server")
_ACTIVE = ("PENDING", "RUNNING")


def _bad(message: str) -> ApiError:
    return ApiError(400, "INVALID_PARAMETER_VALUE", message)


@dataclass
class Statement:
    id: str
    principal: str
    text: str
    dialect: str
    row_limit: int | None
    byte_limit: int | None
    state: str = "PENDING"  # PENDING | RUNNING | SUCCEEDED | FAILED | CANCELED | CLOSED
    error: str | None = None
    error_code: str = "BAD_REQUEST"
    result: Result | None = None
    sandbox: Sandbox | None = None
    future: Future[None] | None = None
    finished: float | None = None
    created: float = field(default_factory=time.monotonic)
    lock: threading.Lock = field(default_factory=threading.Lock)  # state and sandbox change together

    def response(self) -> dict[str, Any]:
        answer: dict[str, Any] = {"statement_id": self.id, "status": {"state": self.state}}
        if self.error is not None:
            answer["status"]["error"] = {"error_code": self.error_code, "message": self.error}
        result = self.result
        if self.state == "SUCCEEDED" and result is not None:
            answer["manifest"] = result.manifest()
            answer["result"] = result.chunk(self.id, 0)
        return answer

    def chunk(self, index: int) -> dict[str, Any]:
        result = self.result
        if self.state != "SUCCEEDED" or result is None:
            raise ApiError(400, "BAD_REQUEST", f"Statement {self.id} is {self.state}: it has no result.")
        return result.chunk(self.id, index)

    def stop(self, state: str, code: str, message: str | None) -> None:
        """Cancel it: a pending one never starts, a running one is interrupted."""
        with self.lock:
            if self.state not in _ACTIVE:
                return
            self.state, self.error_code, self.error = state, code, message
            if self.sandbox is not None:
                self.sandbox.interrupt()


class Statements:
    def __init__(self, warehouse: Path | None, limits: Limits | None = None) -> None:
        self.warehouse = warehouse
        self.limits = limits or Limits()
        self._kept: dict[str, Statement] = {}
        self._lock = threading.Lock()
        # Each principal runs at most half the slots: another's statement always finds one free soon.
        self._pool = FairPool(self.limits.slots, max(1, self.limits.slots // 2), "aifuncs-statement")
        self._loop: asyncio.AbstractEventLoop | None = None  # the server's, known from the first statement

    async def execute(self, session: Session, body: Any) -> dict[str, Any]:
        """Run a statement as the caller of `session` (on its runtime and catalog), answering within the body's
        wait_timeout: its result, or its state to poll."""
        if (
            not isinstance(body, dict)
            or not isinstance(body.get("statement"), str)
            or not body["statement"].strip()
        ):
            raise _bad("Give the SQL as statement.")
        text = _with_parameters(body)
        wait = _wait_s(body.get("wait_timeout", "10s"))
        on_timeout = str(body.get("on_wait_timeout", "CONTINUE")).upper()
        if on_timeout not in ("CONTINUE", "CANCEL"):
            raise _bad("on_wait_timeout is CONTINUE or CANCEL.")
        if body.get("format", "JSON_ARRAY") != "JSON_ARRAY" or body.get("disposition", "INLINE") != "INLINE":
            raise _bad("This server answers format JSON_ARRAY with disposition INLINE.")
        dialect = body.get("dialect", "databricks")
        if dialect not in DIALECTS:
            raise _bad(f"dialect is one of {', '.join(DIALECTS)}, not {dialect!r}.")
        row_limit, byte_limit = _count(body, "row_limit", "rows"), _count(body, "byte_limit", "bytes")
        statement = Statement(uuid.uuid4().hex, session.principal.name, text, dialect, row_limit, byte_limit)
        loop = self._loop = asyncio.get_running_loop()
        self._admit(statement)
        statement.future = self._pool.submit(statement.principal, lambda: self._run(statement, session, loop))
        # Counted from now: a statement waiting for a slot holds its place in the queue, and a principal's cap.
        loop.call_later(self.limits.timeout_s, self._deadline, statement)
        waiting = asyncio.wrap_future(statement.future)
        if wait:
            await asyncio.wait({waiting}, timeout=wait)
        if not waiting.done() and on_timeout == "CANCEL":
            self._stop(statement, "CANCELLED", None)
            await asyncio.wait({waiting}, timeout=5)
        return statement.response()

    def _admit(self, statement: Statement) -> None:
        with self._lock:
            mine = [s for s in self._kept.values() if s.principal == statement.principal]
            active = sum(s.state in _ACTIVE for s in mine)
            if active >= self.limits.per_principal:
                raise ApiError(
                    429,
                    "REQUEST_LIMIT_EXCEEDED",
                    f"{statement.principal} has {active} statements pending or running, the most this server"
                    " runs for one principal at once: wait for one to finish, or cancel one"
                    " (POST /api/2.0/sql/statements/{id}/cancel).",
                    {"Retry-After": "1"},
                )
            finished = sorted((s for s in mine if s.state not in _ACTIVE), key=lambda s: s.created)
            for old in finished[: max(0, len(mine) + 1 - self.limits.kept_count)]:
                del self._kept[old.id]  # the oldest finished ones make room
            self._kept[statement.id] = statement

    def _run(self, statement: Statement, session: Session, loop: asyncio.AbstractEventLoop) -> None:
        try:
            with statement.lock:
                if statement.state != "PENDING":
                    return  # cancelled (or past its time) while it waited for a slot
                statement.state = "RUNNING"
            refuse_reserved(statement.text, statement.dialect)
            sandbox = Sandbox(self.warehouse, session, self.limits)
            try:
                with statement.lock:
                    statement.sandbox = sandbox
                    if statement.state != "RUNNING":
                        return
                relation = sql(sandbox.con, statement.text, dialect=statement.dialect, progress=False)
                result = collect(
                    relation, statement.row_limit, statement.byte_limit, self.limits.result_bytes
                )
            finally:
                with statement.lock:
                    statement.sandbox = None
                sandbox.close()
            self._finish(statement, "SUCCEEDED", result=result)
        except (AifuncsError, duckdb.Error) as error:
            self._finish(statement, "FAILED", message=_message(error, self.limits))
        except Exception:  # a bug of ours: logged, the statement FAILED, the pool keeps serving
            _log.exception("statement %s failed", statement.id)
            self._finish(statement, "FAILED", message="The server failed on this statement; see its log.")
        finally:
            statement.finished, statement.text = time.monotonic(), ""  # its SQL (up to 16 MB) is not kept
            loop.call_soon_threadsafe(self._kept_until_expiry, statement, loop)

    def _finish(
        self, statement: Statement, state: str, *, result: Result | None = None, message: str | None = None
    ) -> None:
        with statement.lock:
            if statement.state == "RUNNING":  # a cancelled one keeps its state and error
                statement.state, statement.result, statement.error = state, result, message

    def _deadline(self, statement: Statement) -> None:
        self._stop(
            statement,
            "DEADLINE_EXCEEDED",
            f"The statement was not done within this server's time limit of {self.limits.timeout_s:g} s"
            " (its wait for a free slot included), and was cancelled: make it do less (a narrower filter,"
            " a row_limit), or ask the operator for a longer --statement-timeout-s.",
        )

    def _stop(self, statement: Statement, code: str, message: str | None) -> None:
        """Cancel it: a pending one never starts; a running one is interrupted, again each half second
        until its thread lets go (an interrupt that falls between two of a script's queries is lost)."""
        statement.stop("CANCELED", code, message)
        loop = self._loop
        if loop is not None:
            loop.call_soon_threadsafe(self._interrupt_until_done, statement)

    def _interrupt_until_done(self, statement: Statement) -> None:
        future, loop = statement.future, self._loop
        if future is None or future.done() or loop is None:
            return
        with statement.lock:
            if statement.sandbox is not None:
                statement.sandbox.interrupt()
        loop.call_later(0.5, self._interrupt_until_done, statement)

    def _kept_until_expiry(self, statement: Statement, loop: asyncio.AbstractEventLoop) -> None:
        """After its statement finishes: its result within the principal's share, closed after kept_s."""
        loop.call_later(self.limits.kept_s, self._close, statement, loop)
        with self._lock:
            holding = sorted(
                (
                    s
                    for s in self._kept.values()
                    if s.principal == statement.principal and s.result is not None
                ),
                key=lambda s: s.finished or 0.0,
                reverse=True,
            )
        total = 0
        for kept in holding:  # newest first: the oldest results go beyond the share
            total += kept.result.nbytes if kept.result is not None else 0
            if total > self.limits.kept_bytes and kept is not statement:
                _closed(kept)

    def _close(self, statement: Statement, loop: asyncio.AbstractEventLoop) -> None:
        if statement.state == "CLOSED" or statement.result is None:
            with self._lock:  # a closed one is forgotten one period later
                self._kept.pop(statement.id, None)
            return
        _closed(statement)
        loop.call_later(self.limits.kept_s, self._close, statement, loop)

    def get(self, identity: Identity, statement_id: str) -> Statement:
        with self._lock:
            found = self._kept.get(statement_id)
        if found is None or found.principal != identity.principal.name:  # another's reads as missing
            raise ApiError(404, "RESOURCE_DOES_NOT_EXIST", f"There is no statement {statement_id}.")
        return found

    def cancel(self, identity: Identity, statement_id: str) -> None:
        self._stop(self.get(identity, statement_id), "CANCELLED", None)

    def close(self) -> None:
        """The server stops: every statement is cancelled, and no thread outlives it for long."""
        with self._lock:
            kept = list(self._kept.values())
        for statement in kept:
            statement.stop("CANCELED", "CANCELLED", "The server stopped.")
        self._pool.close()


def _closed(statement: Statement) -> None:
    with statement.lock:
        if statement.state == "SUCCEEDED":
            statement.state, statement.result = "CLOSED", None


def _message(error: Exception, limits: Limits) -> str:
    text = str(error)
    if isinstance(error, duckdb.OutOfMemoryException):
        text += (
            f" (each statement here may use {limits.memory} of memory: make it do less, or ask the operator for"
            " a larger --statement-memory)"
        )
    return text


def _count(body: dict[str, Any], name: str, unit: str) -> int | None:
    value = body.get(name)
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
        raise _bad(f"{name} is a whole number of {unit}, not {value!r}.")
    return value


def _with_parameters(body: dict[str, Any]) -> str:
    text = str(body["statement"])
    given = body.get("parameters") or []
    if not isinstance(given, list) or not all(
        isinstance(p, dict) and isinstance(p.get("name"), str) for p in given
    ):
        raise _bad('parameters is a list of {"name": ..., "value": ..., "type": ...}.')
    values = {p["name"]: "" if p.get("value") is None else str(p["value"]) for p in given}
    used = {name for _, _, name in markers(text, "databricks")}
    if used - values.keys() or values.keys() - used:
        raise _bad(
            f"The statement's markers ({', '.join(sorted(used)) or 'none'}) and the parameters given"
            f" ({', '.join(sorted(values)) or 'none'}) differ: give one parameter for each :name."
        )
    return substitute(text, "databricks", values) if values else text


def _wait_s(text: Any) -> float:
    found = re.fullmatch(r"\s*(\d+)\s*s\s*", str(text))
    seconds = int(found.group(1)) if found else -1
    if seconds != 0 and not 5 <= seconds <= 50:
        raise _bad('wait_timeout is "0s", or between "5s" and "50s".')
    return float(seconds)
