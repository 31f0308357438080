"""Rate limits on the request path: every model request is admitted under its endpoint's limits first.

A batch query waits its turn (the limiter says how long), so a million rows under 600 calls a minute run at
600 a minute; a caller that asked not to wait gets `RateLimited` with the real wait. Token limits reserve
an estimate when the request leaves, the prompt's (characters + 1) / 4 plus `max_tokens` per row, and
settle to the tokens the model reports (or the same estimate of its reply when it reports none).

The limiter's file may be locked by another process, or its shared database (AIFUNCS_DATABASE_URL) slow or
away: its transactions run on a thread of their own, never on the event loop, and wait a bounded time
(`limits.LOCK_WAIT_S`). A request whose limits cannot be checked is
refused (`LimiterUnavailable`: 503 with Retry-After on a server), never let through; a batch query waits and
tries again, up to `UNAVAILABLE_WAIT_S`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from aifuncs._home import home_file
from aifuncs.errors import LimiterUnavailable, RateLimited
from aifuncs.governance.limits import Limiter, Refusal, Reservation, open_limiter
from aifuncs.providers.base import Prediction
from aifuncs.runtime._call import CallSpec
from aifuncs.runtime._payloads import log_request
from aifuncs.storage import database_url

UNAVAILABLE_WAIT_S = 60.0  # a batch query waits this long at most for a locked limiter store
DEFAULT_MAX_TOKENS = 256  # a chat request's reply budget when the call sets no max_tokens


def text_chars(values: Any) -> int | None:
    """Characters of a batch of text (requests or answers), None for anything else: counting other
    values would cost more than the request (a million-row tabular batch)."""
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    if isinstance(values, pa.Array) and (
        pa.types.is_string(values.type) or pa.types.is_large_string(values.type)
    ):
        return int(pc.sum(pc.utf8_length(values)).as_py() or 0)
    if isinstance(values, list) and all(isinstance(v, str) or v is None for v in values):
        return sum(len(v) for v in values if v is not None)
    return None


def estimate_tokens(call: CallSpec, chunk: pa.Array, returns_text: bool) -> int:
    """What a request may cost in tokens, before it is sent: its text's (characters + 1) / 4 per row, plus
    the reply's bound. Tokens are a measure of text: a tabular request costs none."""
    chars = text_chars(chunk)
    prompt = 0 if chars is None else (chars + len(chunk)) // 4
    reply = (call.parameters or {}).get("max_tokens") or (DEFAULT_MAX_TOKENS if returns_text else 0)
    return prompt + int(reply) * len(chunk)


def used_tokens(output: Any, chunk: pa.Array) -> int:
    """What a request cost: the model's own count, else (characters + 1) / 4 of its text and its reply's."""
    if isinstance(output, Prediction) and output.input_tokens is not None:
        return output.input_tokens + (output.output_tokens or 0)
    outputs = output.outputs if isinstance(output, Prediction) else output
    prompt, reply = text_chars(chunk), text_chars(outputs)
    return (0 if prompt is None else (prompt + len(chunk)) // 4) + (
        0 if reply is None else (reply + len(chunk)) // 4
    )


class RateGate:
    """The runtime's door to the shared limiter of each AIFUNCS_HOME."""

    def __init__(self) -> None:
        self._limiters: dict[tuple[Path, str | None], Limiter] = {}  # per home and shared database
        # One thread for the limiters' transactions (they take turns on one connection anyway): a locked
        # store holds that thread up, not the threads other endpoints' work runs on.
        self._thread = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="aifuncs-limits")

    def _limiter(self) -> Limiter:
        path = home_file("limits.db")
        found = self._limiters.get((path, database_url()))
        if found is None:
            found = self._limiters[(path, database_url())] = open_limiter(path)
        return found

    async def admit(self, call: CallSpec, chunk: pa.Array, returns_text: bool) -> Reservation | None:
        """Take the request's place under every limit that holds for its principal, waiting while full."""
        if call.precheck:
            await self._prechecked(call, chunk)
        if not call.rate_checks:
            return None
        counts_tokens = any(b.unit == "tokens" for check in call.rate_checks for b in check.any_of)
        tokens = estimate_tokens(call, chunk, returns_text) if counts_tokens else 0
        limiter = self._limiter()
        loop = asyncio.get_running_loop()
        began = time.monotonic()
        while True:
            answer: Reservation | Refusal | None = limiter.try_leased(call.rate_checks, tokens)
            try:
                if answer is None:
                    limiter.check_available()
                    answer = await loop.run_in_executor(
                        self._thread, limiter.try_acquire, call.rate_checks, tokens
                    )
            except LimiterUnavailable as unavailable:
                if not call.wait_for_limits or time.monotonic() - began > UNAVAILABLE_WAIT_S:
                    log_request(call, chunk, None, None, None, 503)
                    raise
                await asyncio.sleep(unavailable.wait_s)
                continue
            if isinstance(answer, Reservation):
                return answer
            if not call.wait_for_limits:
                log_request(call, chunk, None, None, None, 429)
                raise RateLimited(
                    f"Endpoint {call.endpoint.name!r} is rate limited ({answer.label}): the next request fits in"
                    f" {answer.wait_s:.2f} s. Wait and retry, or let the query wait its turn.",
                    answer.wait_s,
                )
            for meter in call.meters:
                meter.paced(answer.label)
            await asyncio.sleep(answer.wait_s)

    async def _prechecked(self, call: CallSpec, chunk: pa.Array) -> None:
        """Wait until `call.precheck` would admit a call (or raise RateLimited when the call may not wait)."""
        loop = asyncio.get_running_loop()
        while refusal := await loop.run_in_executor(self._thread, self._limiter().peek, call.precheck):
            if not call.wait_for_limits:
                log_request(call, chunk, None, None, None, 429)
                raise RateLimited(
                    f"Rate limited ({refusal.label}): the next request fits in {refusal.wait_s:.2f} s (its"
                    f" guardrail's topic check on {call.endpoint.name!r} waits for it too). Wait and retry, or let"
                    " the query wait its turn.",
                    refusal.wait_s,
                )
            await asyncio.sleep(refusal.wait_s)

    async def settle(self, reservation: Reservation | None, output: Any, chunk: pa.Array) -> None:
        if reservation is not None and reservation.buckets:
            used = used_tokens(output, chunk)
            if used > reservation.tokens:  # a debit is a transaction: off the loop
                await asyncio.get_running_loop().run_in_executor(
                    self._thread, self._limiter().settle, reservation, used
                )
            else:
                self._limiter().settle(reservation, used)
