"""Sending one model request: admitted under the endpoint's rate limits and in-flight limit, retried with
backoff, hedged when it stalls, coalesced with others to an in-process model, and accounted whatever its fate."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import pyarrow as pa

from aifuncs.catalog import Endpoint
from aifuncs.errors import BudgetExceeded, RateLimited, RemoteError
from aifuncs.providers import Provider
from aifuncs.providers.base import CallOptions, Prediction
from aifuncs.runtime._accounting import Sends, record_request
from aifuncs.runtime._call import CallSpec
from aifuncs.runtime._coalesce import Coalescer
from aifuncs.runtime._limit import AdaptiveLimit, GatePlace, backoff_s
from aifuncs.runtime._meter import begin_request, cancel_request, end_request
from aifuncs.runtime._policy import shares_answers
from aifuncs.runtime._rate import RateGate
from aifuncs.runtime._usage import UsageLog

# A batch of small requests to an in-process model runs on the runtime's loop while the model's calls take
# less than this (smoothed); longer ones go to a worker thread, so the loop is never held up for long.
INLINE_CALL_S = 0.005
_SMOOTHING = 0.2
_HEDGE_RECHECK_S = 0.25  # how often a request sent before the hedging delay was known looks again


class Sender:
    """Sends requests for one runtime; its state (limits, coalescer, timings) is touched on the loop thread only."""

    def __init__(self, usage: UsageLog) -> None:
        self.usage = usage
        self.rates = RateGate()
        self.limits: dict[str, AdaptiveLimit] = {}
        self._coalescer = Coalescer()  # small concurrent requests to an in-process model, sent together
        self._call_s: dict[int, float] = {}  # per in-process provider: its calls' smoothed time
        # Set by a server: remote endpoints without a max_concurrency of their own may have this many
        # requests in flight (a batch query's default of 16 would queue a gateway's clients behind it).
        self.serving_in_flight: int | None = None

    def most_in_flight(self, provider: Provider) -> int:
        """The endpoint's requests in flight at most: its own setting, else its kind's default, raised for a
        remote endpoint in a server (`serving_in_flight`), where clients bring the concurrency."""
        if provider.in_process or provider.options.max_concurrency or self.serving_in_flight is None:
            return provider.concurrency
        return max(provider.concurrency, self.serving_in_flight)

    def limit(self, endpoint: Endpoint, maximum: int, processes: int = 1) -> AdaptiveLimit:
        """The endpoint's in-flight limit in this process: all of it, or its share when `processes` answer
        the same calls at once."""
        key = endpoint.identity if processes == 1 else f"{endpoint.identity}/{processes}"
        if key not in self.limits:
            self.limits[key] = AdaptiveLimit(max(1, maximum // processes))
        return self.limits[key]

    async def predict(
        self,
        provider: Provider,
        call: CallSpec,
        chunk: pa.Array,
        limit: AdaptiveLimit,
        place: GatePlace | None = None,
    ) -> Any:
        """One model request with its retries, recorded in the usage log whatever its fate: each time it is
        sent (retries and hedged resends too) it is journaled first (`UsageLog.sending`), and its row counts
        every send in `attempts`."""
        options = CallOptions(call.parameters, call.response_format, call.result_type)
        # A stalled request of a call whose answers do not depend on which reply comes may be sent again.
        hedgeable = not provider.in_process and shares_answers(call, provider)
        started, attempt = time.perf_counter(), 0
        sends = Sends(self.usage, call, chunk)
        try:
            while True:
                attempt += 1
                try:
                    if hedgeable:
                        output = await self._hedged(provider, call, chunk, options, limit, sends.sent)
                    else:
                        output = await self._send(provider, call, chunk, options, limit, sends.sent)
                    break
                except (BudgetExceeded, RateLimited):
                    raise  # not a request: nothing was sent this time
                except RemoteError as error:
                    if error.status == 429:
                        limit.throttled(error.retry_after)
                    if not error.retryable or attempt > call.retries(provider.max_retries):
                        raise
                    wait_s = backoff_s(attempt, provider.retry_base_s, error.retry_after)
                    if place is None:
                        await asyncio.sleep(wait_s)
                    else:  # nothing paid waits: its place goes to a request that can be sent now
                        place.give()
                        await asyncio.sleep(wait_s)
                        await place.take()
        except BaseException as error:  # cancelled too: what was sent was paid, and is accounted
            if sends.count:  # else refused before it went (a budget, a rate limit): not a request
                record_request(self.usage, call, provider, chunk, started, sends.count, None, error, sends.id)
            raise
        record_request(self.usage, call, provider, chunk, started, sends.count, output, None, sends.id)
        return output.outputs if isinstance(output, Prediction) else output

    async def _send(
        self,
        provider: Provider,
        call: CallSpec,
        chunk: pa.Array,
        options: CallOptions,
        limit: AdaptiveLimit,
        journal: Callable[[], None] = lambda: None,
    ) -> Any:
        """One request under the endpoint's rate limits and in-flight limit, counted by the call's meters;
        `journal` is told just before it goes."""
        reservation = await self.rates.admit(call, chunk, provider.returns_text)
        stalled = False
        if _coalesces(provider, chunk):
            begin_request(call.meters)
            journal()
            sent = time.perf_counter()

            async def send(rows: pa.Array) -> Any:
                async with limit:
                    return await self._in_process_call(provider, rows, options)

            try:
                output = await self._coalescer.predict(
                    provider, options, chunk, send, provider.concurrency, provider.batch_rows, journal
                )
            except BaseException:
                cancel_request(call.meters)
                raise
            end_request(call.meters, provider, len(chunk), output)
        else:
            place = limit.request()
            async with place:  # a stalled request gives its slot on while it waits
                begin_request(call.meters)
                journal()
                sent = time.perf_counter()
                try:
                    output = await provider.predict(chunk, options)
                except BaseException:
                    cancel_request(call.meters)
                    raise
                end_request(call.meters, provider, len(chunk), output)
            stalled = place.stalled
        await self.rates.settle(reservation, output, chunk)
        # In-process models slow down with concurrency by design; only a server's queueing counts, and a
        # stall set aside while the server answered others is this request's trouble, not a queue.
        limit.succeeded(None if provider.in_process or stalled else time.perf_counter() - sent)
        return output

    async def _in_process_call(self, provider: Provider, rows: pa.Array, options: CallOptions) -> Any:
        """A batch of small requests to an in-process model: on this loop while its calls are known to be
        short (a thread hop and the GIL handoffs it brings cost more than a cheap model: pyarrow on the loop
        thread waits milliseconds for the GIL while a model thread runs Python), else in a worker thread.

        The first call loads the model, in a thread; the next runs on the loop and is timed (wall time: a
        function that waits on something holds the loop as long as one that computes). Once the model's calls
        take longer than `INLINE_CALL_S` (smoothed), it stays in worker threads."""
        if not provider.blocking:
            return await provider.predict(rows, options)
        key = id(provider)
        took = self._call_s.get(key)
        if took is not None and took < INLINE_CALL_S:
            began = time.perf_counter()
            output = provider.predict_blocking(rows, options)
            spent = time.perf_counter() - began
            self._call_s[key] = spent if took < 0 else (1 - _SMOOTHING) * took + _SMOOTHING * spent
            return output
        output = await asyncio.to_thread(provider.predict_blocking, rows, options)
        if took is None:
            self._call_s[key] = -1.0  # loaded: the next call is measured on the loop
        return output

    async def _hedged(
        self,
        provider: Provider,
        call: CallSpec,
        chunk: pa.Array,
        options: CallOptions,
        limit: AdaptiveLimit,
        journal: Callable[[], None] = lambda: None,
    ) -> Any:
        """Send the request; if no reply comes within the endpoint's hedging delay (a few times its usual
        latency), send it once more and take whichever answers first (the other is cancelled). Fails only
        when both fail, with the first one's error."""
        first = asyncio.ensure_future(self._send(provider, call, chunk, options, limit, journal))
        first.add_done_callback(_retrieve)
        tasks = [first]
        sent = time.perf_counter()
        failure: BaseException | None = None
        try:  # whatever ends this (an answer, both failing, the query cancelled), no request is left behind
            while True:
                delay = limit.hedge_after_s()  # known once enough replies came back; it moves with them
                due = None if delay is None else sent + delay - time.perf_counter()
                done, _ = await asyncio.wait({first}, timeout=due if due and due > 0 else _HEDGE_RECHECK_S)
                if done:
                    return first.result()
                if delay is not None and time.perf_counter() - sent >= delay and limit.may_hedge():
                    break
            second = asyncio.ensure_future(self._send(provider, call, chunk, options, limit, journal))
            second.add_done_callback(_retrieve)
            tasks.append(second)
            pending = set(tasks)
            while pending:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    if task.exception() is None:
                        return task.result()
                    failure = failure or task.exception()
        finally:
            for task in tasks:
                if not task.done():
                    task.cancel()
        assert failure is not None
        raise failure


def _coalesces(provider: Provider, chunk: pa.Array) -> bool:
    """Whether a request joins others to its model (`_coalesce.py`): small requests to an in-process
    tabular model (a text model answers one prompt at a time anyway; a big request is a batch already)."""
    return provider.in_process and not provider.returns_text and len(chunk) <= provider.batch_rows // 4


def _retrieve(task: asyncio.Future[Any]) -> None:
    """A hedged request's loser may fail after the winner answered: its error is expected, not news."""
    if not task.cancelled():
        task.exception()
