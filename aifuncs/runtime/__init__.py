"""The runtime: the only caller of providers.

An engine hands it one batch of requests for one call site; the runtime drops NULL requests, splits
the rest into requests sized for the endpoint, runs them concurrently on one background event loop,
converts the answers to the call's type and puts them back in row order, with per-row errors.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import itertools
import json
import logging
import os
import threading
import time
import uuid
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import pyarrow as pa
import pyarrow.compute as pc

from aifuncs._fork import after_fork_in_child, leave_behind
from aifuncs._home import home_file
from aifuncs._types import arrow_type, parse_replies, plain_type, to_arrow
from aifuncs.catalog import Endpoint
from aifuncs.errors import (
    AifuncsError,
    BudgetExceeded,
    ConfigError,
    MissingDependency,
    ModelError,
    RateLimited,
    RemoteError,
    ReplyParseError,
    ResultTypeError,
)
from aifuncs.providers import Provider, provider_class
from aifuncs.providers.base import CallOptions, Prediction
from aifuncs.runtime._budget import Budget, session_budget, set_session_budget
from aifuncs.runtime._bulk import one_native_thread_per_call, prompt_gil_handoffs, step_rows, steps_ahead
from aifuncs.runtime._call import CallSpec, Failure, RequestContext, Scored
from aifuncs.runtime._coalesce import Coalescer
from aifuncs.runtime._distinct import answer_keys, call_identity, distinct, every_row, to_json_texts
from aifuncs.runtime._guard import guarded
from aifuncs.runtime._limit import AdaptiveLimit, GatePlace, backoff_s
from aifuncs.runtime._loop import BackgroundLoop
from aifuncs.runtime._meter import Meter, TokenTally, begin_request, end_request
from aifuncs.runtime._payloads import log_request
from aifuncs.runtime._rate import RateGate, text_chars
from aifuncs.runtime._reuse import assemble, keep_answers
from aifuncs.runtime._store import AnswerStore
from aifuncs.runtime._tasks import answer_task
from aifuncs.runtime._usage import UsageLog, UsageRow
from aifuncs.runtime._usage import now as usage_now

__all__ = [
    "Budget",
    "CallSpec",
    "Failure",
    "Meter",
    "RequestContext",
    "Runtime",
    "TokenTally",
    "default_runtime",
    "session_budget",
    "set_session_budget",
]

_MAX_MESSAGE = 1000
# A batch of small requests to an in-process model runs on the runtime's loop while the model's calls take
# less than this (smoothed); longer ones go to a worker thread, so the loop is never held up for long.
INLINE_CALL_S = 0.005
_SMOOTHING = 0.2
_HEDGE_RECHECK_S = 0.25  # how often a request sent before the hedging delay was known looks again
_log = logging.getLogger("aifuncs")
T = TypeVar("T")

Answer = tuple[str | None, str | None]  # an answer as stored (JSON text), or the error that stands for it
Keep = Callable[[list[bytes], pa.Array, list[str | None]], Awaitable[None]]


def describe(error: BaseException) -> str:
    text = str(error) if isinstance(error, AifuncsError) else f"{type(error).__name__}: {error}"
    return text if len(text) <= _MAX_MESSAGE else text[: _MAX_MESSAGE - 3] + "..."


class Runtime:
    def __init__(self) -> None:
        self._loop = BackgroundLoop()
        self._providers: dict[str, Provider] = {}
        self._limits: dict[str, AdaptiveLimit] = {}
        self._gates: dict[str, asyncio.Semaphore] = {}  # per endpoint: requests sent, answers not committed
        self._row_caps: dict[str, int] = {}  # per endpoint: rows per request after a 413 Payload Too Large
        self._rates = RateGate()
        self._coalescer = Coalescer()  # small concurrent requests to an in-process model, sent together
        self._call_s: dict[int, float] = {}  # per in-process provider: its calls' smoothed time (loop only)
        # Set by a server: remote endpoints without a max_concurrency of their own may have this many
        # requests in flight (a batch query's default of 16 would queue a gateway's clients behind it).
        self.serving_in_flight: int | None = None
        self.usage = UsageLog()
        self._lock = threading.Lock()
        self._stores: dict[Path, AnswerStore] = {}
        self._asking: dict[
            bytes, asyncio.Future[Answer]
        ] = {}  # requests in flight, by key (loop thread only)
        self._awaited: set[bytes] = set()  # ...and those another batch waits for
        self._running: dict[asyncio.Task[Any], RequestContext] = {}  # submitted calls (loop thread only)

    def provider(self, endpoint: Endpoint) -> Provider:
        """The provider of an endpoint version, built once (models load once per process)."""
        key = _identity(endpoint)
        with self._lock:
            provider = self._providers.get(key)
            if provider is None:
                provider = provider_class(endpoint.kind)(endpoint)
                self._providers[key] = provider
            return provider

    def run_call(self, call: CallSpec, requests: pa.Array, *, batch_rows: int | None = None) -> pa.Array:
        """Answer one batch for a call site: one value per request, NULL for NULL requests.

        `batch_rows` overrides the endpoint's rows per model call (the planner's bulk path).
        """
        return self.submit_call(call, requests, batch_rows=batch_rows).result()

    def submit_call(
        self, call: CallSpec, requests: pa.Array | pa.ChunkedArray, *, batch_rows: int | None = None
    ) -> concurrent.futures.Future[pa.Array]:
        """`run_call` without waiting: the answers arrive in the returned future."""
        return self._loop.submit(self._tracked(call.context, self._answer(call, requests, batch_rows)))

    async def _tracked(self, context: RequestContext, work: Awaitable[T]) -> T:
        task = asyncio.current_task()
        assert task is not None
        self._running[task] = context
        try:
            return await work
        finally:
            del self._running[task]

    def cancel_calls(self, context: RequestContext, timeout_s: float = 30.0) -> None:
        """Cancel one caller's submitted calls still running (a stopped job's: its engine was interrupted, but
        the batches it handed over would go on sending) and wait until each has ended, so no request leaves
        afterwards and those in flight are in the usage log when this returns."""

        async def cancel() -> None:
            tasks = [task for task, owner in self._running.items() if owner == context]
            for task in tasks:
                task.cancel()
            if tasks:
                await asyncio.wait(tasks, timeout=timeout_s)

        self._loop.run(cancel())

    async def answer_call(self, call: CallSpec, requests: pa.Array) -> pa.Array:
        """`run_call` from a coroutine: on the runtime's loop itself when the caller runs there (a server
        that adopted it: `adopt_loop`), else handed to it."""
        if self._loop.running_here():
            return await self._answer(call, requests, None)
        return await asyncio.wrap_future(self.submit_call(call, requests))

    def adopt_loop(self, loop: asyncio.AbstractEventLoop) -> bool:
        """Run this process's model calls on `loop` (a server's own, running on the calling thread) rather
        than on a thread of the runtime's; False if the runtime's loop runs already."""
        return self._loop.adopt(loop)

    def bulk_step(self, calls: Sequence[CallSpec], total_rows: int | None) -> int:
        """Rows an engine should hand `score_batches` per batch: one equal model call per call site each."""
        return step_rows(calls, [self.provider(c.endpoint) for c in calls], total_rows)

    def score_batches(
        self,
        calls: Sequence[CallSpec],
        batches: Iterable[Sequence[pa.Array | pa.ChunkedArray]],
        step: int | None = None,
    ) -> list[list[pa.Array]]:
        """Answer a stream of batches (one column per call) in big model calls, in order (the bulk path).

        The next batch is read while earlier ones are scored, with a few batches in flight at most,
        so memory stays bounded however long the stream is. `step` (from `bulk_step`) caps the rows per
        model call, so batches of that size are scored in one call each.
        """
        providers = [self.provider(c.endpoint) for c in calls]
        native = max((p.concurrency for p in providers if p.in_process), default=1)
        call_rows = [min(filter(None, (c.bulk_rows, step)), default=None) for c in calls]
        ahead: int | None = None
        answers: list[list[pa.Array]] = []
        pending: deque[list[concurrent.futures.Future[pa.Array]]] = deque()
        with one_native_thread_per_call(native), prompt_gil_handoffs(native):
            try:
                for batch in batches:
                    if ahead is None:
                        ahead = steps_ahead(call_rows, providers, len(batch[0]) if batch else 0)
                    pending.append(
                        [
                            self.submit_call(c, col, batch_rows=rows)
                            for c, col, rows in zip(calls, batch, call_rows, strict=True)
                        ]
                    )
                    if len(pending) > ahead:
                        answers.append([f.result() for f in pending.popleft()])
                while pending:
                    answers.append([f.result() for f in pending.popleft()])
            except BaseException:
                for futures in pending:
                    for future in futures:
                        future.cancel()
                raise
        return answers

    async def _answer(
        self, call: CallSpec, requests: pa.Array | pa.ChunkedArray, batch_rows: int | None
    ) -> pa.Array:
        output = arrow_type(call.output_type)
        if isinstance(requests, pa.ChunkedArray) and not self._takes_chunks(call):
            requests = await asyncio.to_thread(requests.combine_chunks)  # off the loop: it may be 500k rows
        if requests.null_count == 0:  # the usual case, without a compute call (a REST request is one row)
            valid, valid_count = None, len(requests)
        else:
            valid = requests.is_valid()
            if isinstance(valid, pa.ChunkedArray):
                valid = valid.combine_chunks()  # a bitmap: cheap, and the scatter below wants one array
            valid_count = pc.sum(valid).as_py() or 0
        if valid_count == 0:
            for meter in call.meters:
                meter.answered(len(requests))
            return pa.nulls(len(requests), output)
        present = requests if valid_count == len(requests) else requests.filter(valid)
        values, errors = await guarded(
            call,
            present,
            lambda sendable: self._resolve(call, sendable, batch_rows),
            lambda decisions: self._record_guardrail(call, decisions),
            None if call.topic_call is None else self._embedder(call.topic_call),
        )
        # Only these calls keep failures per row (others raise); counted in C: a batch may have 1M rows.
        failed = len(errors) - errors.count(None) if call.failure is not Failure.RAISE else 0
        if call.failure is Failure.NULL:
            if failed:
                first = next(e for e in errors if e)
                _log.warning("%s: %d rows have no answer (NULL); the first: %s", call.function, failed, first)
        elif call.failure is Failure.RECORD:
            messages = pa.array(errors, pa.string())
            values = pa.StructArray.from_arrays([values, messages], fields=list(output))
        for meter in call.meters:
            meter.answered(len(requests), failed)
        if valid is None:
            return values
        # Scatter back: the i-th present row goes to the i-th valid position; NULL requests stay NULL.
        positions = pc.subtract(pc.cumulative_sum(valid.cast(pa.int64())), 1)
        return values.take(pc.if_else(valid, positions, pa.scalar(None, pa.int64())))

    async def _resolve(self, call: CallSpec, requests: pa.Array, batch_rows: int | None) -> Scored:
        """Where answers are reusable, send each distinct request once: not at all when the store has its
        answer, and not again while another batch of this process is asking it (another DuckDB thread,
        another vector)."""
        provider = self.provider(call.endpoint)
        reuse = self.reuse(call)
        if reuse is None:
            return await self._score(call, requests, batch_rows)
        checkpoint = call.checkpoint
        store = self._store() if reuse == "store" else checkpoint.store if checkpoint else None
        # A sampling model's answers are kept for a job's rerun, but two equal requests still get two.
        sampled = reuse == "checkpoint" and not self._deterministic(call, provider)
        unique = await asyncio.to_thread(every_row if sampled else distinct, requests)
        keys = answer_keys(self._call_identity(call, provider, requests.type), unique.texts)
        if sampled and checkpoint is not None:
            keys = checkpoint.occurrences(keys)
        mine: list[int] = []
        elsewhere: dict[int, asyncio.Future[Answer]] = {}
        for i, key in enumerate(keys):  # on the loop thread: no other batch interleaves here
            if (pending := self._asking.get(key)) is not None:
                elsewhere[i] = pending
                self._awaited.add(key)
            else:
                mine.append(i)
                self._asking[key] = asyncio.get_running_loop().create_future()
        # A batch stops "asking" a key only after its answer is committed, so a key neither asked nor
        # stored when looked up below has truly no answer yet.
        known: dict[bytes, str] = {}
        todo: list[int] = mine
        scored: Scored | None = None
        try:
            if store is not None and mine:
                known = await asyncio.to_thread(store.lookup, [keys[i] for i in mine])
                todo = [i for i in mine if keys[i] not in known]
            if todo:
                values = unique.values if len(todo) == len(keys) else unique.values.take(pa.array(todo))
                keep = None if store is None else functools.partial(keep_answers, store, call.endpoint.name)
                scored = await self._score(call, values, batch_rows, [keys[i] for i in todo], keep)
        finally:
            self._tell_waiters(keys, mine, known, todo, scored)
        texts = {i: known[keys[i]] for i in mine if keys[i] in known}
        errors: dict[int, str] = {}
        for i, pending in elsewhere.items():
            text, error = await pending
            if text is not None:
                texts[i] = text
            else:
                errors[i] = error or "no answer"
        if errors and call.fail_on_error:
            raise ModelError(call.endpoint.name, 1, next(iter(errors.values())))
        target = arrow_type(call.result_type)
        values, row_errors = assemble(
            call, len(keys), todo, scored or (pa.array([], target), []), texts, errors
        )
        return unique.expand(values), unique.expand_list(row_errors)

    def _tell_waiters(
        self,
        keys: list[bytes],
        mine: list[int],
        known: dict[bytes, str],
        todo: list[int],
        scored: Scored | None,
    ) -> None:
        """Settle the futures of the requests this batch was asking, whatever happened to it."""
        waited = [i for i in mine if keys[i] in self._awaited]
        answers: dict[int, Answer] = {}
        if waited:
            if scored is not None:
                texts = to_json_texts(scored[0]).to_pylist()
                for i, text, error in zip(todo, texts, scored[1], strict=True):
                    answers[i] = (text if error is None else None, error)
            for i in mine:
                if keys[i] in known:
                    answers[i] = (known[keys[i]], None)
        for i in mine:
            pending = self._asking.pop(keys[i])
            if keys[i] in self._awaited:
                self._awaited.discard(keys[i])
                pending.set_result(answers.get(i, (None, "the batch that was asking it failed")))

    def _takes_chunks(self, call: CallSpec) -> bool:
        """Whether a chunked batch may reach this call's provider as it is: plain model calls only (task
        prompts, de-duplication and the answer store work on one array)."""
        return self.provider(call.endpoint).accepts_chunks and call.task is None and self.reuse(call) is None

    def reuse(self, call: CallSpec) -> str | None:
        """How answers of this call may be reused: "store" (kept under AIFUNCS_HOME, shared by later
        queries), "query" (duplicates within this process's batches only), "checkpoint" (kept for a rerun
        of the running job only), or None (every row is asked: a model that samples must give each row
        its own answer)."""
        provider = self.provider(call.endpoint)
        wanted = call.cache if call.cache is not None else provider.options.cache
        if wanted is False:
            return None
        checkpoint = "checkpoint" if call.checkpoint is not None else None
        if wanted is None:
            deterministic = self._deterministic(call, provider)
            if not deterministic or not provider.reuse_pays:
                # A job keeps what a rerun would pay for again; a cheap deterministic model rescoring is not.
                return checkpoint if not deterministic else None
        if os.environ.get("AIFUNCS_CACHE", "").lower() in ("0", "off", "false", "no"):
            return checkpoint or "query"
        return "store"

    def shares_answers(self, call: CallSpec) -> bool:
        """Whether rows with the same request may share one answer within a query: the model gives the same
        request the same answer (a tabular model, temperature 0) or the call says `cache => true`, and neither
        the call nor the endpoint says `cache => false` (every row asked afresh)."""
        provider = self.provider(call.endpoint)
        wanted = call.cache if call.cache is not None else provider.options.cache
        return wanted is True or (wanted is None and self._deterministic(call, provider))

    @staticmethod
    def _deterministic(call: CallSpec, provider: Provider) -> bool:
        return provider.deterministic(CallOptions(call.parameters, call.response_format, call.result_type))

    def stored(self, call: CallSpec, request_type: pa.DataType, texts: list[str]) -> int:
        """How many of these distinct requests (canonical JSON, as `to_json_texts` writes them) the store
        can answer for this call: what EXPLAIN reports as cached."""
        if self.reuse(call) != "store" or not texts:
            return 0
        keys = answer_keys(self._call_identity(call, self.provider(call.endpoint), request_type), texts)
        return len(self._store().lookup(keys))

    def _store(self) -> AnswerStore:
        path = home_file("answers.db")
        with self._lock:
            store = self._stores.get(path)
            if store is None:
                store = self._stores[path] = AnswerStore(path)
            return store

    def _call_identity(self, call: CallSpec, provider: Provider, request_type: pa.DataType) -> bytes:
        endpoint = call.endpoint
        return call_identity(
            call.function,
            endpoint.name,
            endpoint.version,
            endpoint.kind,
            endpoint.options,
            provider.model_version(),
            call.result_type,
            call.model_parameters,
            call.response_format,
            call.task.identity() if call.task else None,
            str(plain_type(request_type)),  # DuckDB may hand VARCHAR over as string or string_view
            *self._answer_owner(call, provider),
        )

    @staticmethod
    def _answer_owner(call: CallSpec, provider: Provider) -> tuple[str, ...]:
        """Whose kept answers a call may use: a token principal's own (one principal's answers, served to
        another, would tell what it asked, by content or by timing), unless the endpoint shares them. The
        home's owner keeps the answers it always had; every hit was authorized (CAN_QUERY) at plan time."""
        principal = call.principal
        if principal is None or principal.implicit or provider.options.share_answers:
            return ()
        return (f"principal:{principal.name}",)

    async def _score(
        self,
        call: CallSpec,
        requests: pa.Array,
        batch_rows: int | None,
        keys: list[bytes] | None = None,
        keep: Keep | None = None,
    ) -> Scored:
        provider = self.provider(call.endpoint)
        target = arrow_type(call.result_type)
        limit = self._limit(call.endpoint, self._most_in_flight(provider), call.processes)
        size = batch_rows or provider.batch_rows
        size = min(size, self._row_caps.get(_identity(call.endpoint), size))  # after a 413
        refused: list[BudgetExceeded] = []
        chunks = [
            self._score_chunk(
                provider,
                call,
                requests.slice(start, size),
                target,
                limit,
                None if keys is None else keys[start : start + size],
                keep,
                refused,
            )
            for start in range(0, len(requests), size)
        ]
        parts = await _all_or_nothing(chunks)
        if refused:  # raised only now: the requests in flight when the budget ran out finished and were kept
            raise refused[0]
        return _concat(parts, target)

    async def _score_chunk(
        self,
        provider: Provider,
        call: CallSpec,
        chunk: pa.Array,
        target: pa.DataType,
        limit: AdaptiveLimit,
        keys: list[bytes] | None = None,
        keep: Keep | None = None,
        refused: list[BudgetExceeded] | None = None,
    ) -> Scored:
        # Answers that are kept hold a place from before the request is sent until they are committed: the
        # in-flight limit frees its place when the reply arrives, and without this bound replies waiting for
        # a slow commit would pile up, all of them paid again if the process is killed.
        place = GatePlace(self._unkept(call.endpoint, provider) if keep is not None else None)
        await place.take()
        try:
            try:
                if call.task is not None:

                    def predict(rows: pa.Array) -> Awaitable[Any]:
                        return self._predict(provider, call, rows, limit, place)

                    values, row_errors = await answer_task(call, provider, chunk, target, predict)
                else:
                    values, row_errors = await self._answer_model(provider, call, chunk, target, limit, place)
                if len(values) != len(chunk):
                    raise ResultTypeError(
                        f"The model returned {len(values)} results for {len(chunk)} requests."
                    )
            except (ConfigError, MissingDependency, RateLimited):
                raise  # the endpoint is broken, or the caller will not wait: no row can succeed
            except BudgetExceeded as error:
                if refused is None:
                    raise
                refused.append(error)
                return pa.nulls(len(chunk), target), [str(error)] * len(chunk)
            except Exception as error:
                too_large = isinstance(error, RemoteError) and error.status == 413 and len(chunk) > 1
                if too_large:  # the endpoint takes fewer rows per request: from now on, and for these rows
                    key = _identity(call.endpoint)
                    self._row_caps[key] = min(self._row_caps.get(key, len(chunk)), max(1, len(chunk) // 2))
                elif call.fail_on_error:
                    raise ModelError(call.endpoint.name, len(chunk), describe(error)) from error
                elif len(chunk) == 1 or (isinstance(error, RemoteError) and error.retryable):
                    # A request that failed after its retries: each row carries the message.
                    return pa.nulls(len(chunk), target), [describe(error)] * len(chunk)
                place.give()  # the halves take places of their own
                # Bisect to find the rows that fail; the others keep their answers.
                half = len(chunk) // 2
                parts = await asyncio.gather(
                    self._score_chunk(
                        provider,
                        call,
                        chunk.slice(0, half),
                        target,
                        limit,
                        keys and keys[:half],
                        keep,
                        refused,
                    ),
                    self._score_chunk(
                        provider, call, chunk.slice(half), target, limit, keys and keys[half:], keep, refused
                    ),
                )
                return _concat(list(parts), target)
            if keep is not None and keys is not None:
                await keep(keys, values, row_errors)  # stored before the query goes on: a rerun resumes here
            return values, row_errors
        finally:
            place.give()

    async def _answer_model(
        self,
        provider: Provider,
        call: CallSpec,
        chunk: pa.Array,
        target: pa.DataType,
        limit: AdaptiveLimit,
        place: GatePlace | None = None,
    ) -> Scored:
        """ai_query's rows: the model's output as the call's type (a text reply parsed into it)."""
        output = await self._predict(provider, call, chunk, limit, place)
        if not provider.returns_text or pa.types.is_string(target):
            return to_arrow(output, target), [None] * len(chunk)
        values, row_errors = parse_replies(to_arrow(output, pa.string()), target)
        if any(row_errors) and call.fail_on_error:
            first = next(i for i, e in enumerate(row_errors) if e)
            raise ReplyParseError(f"{row_errors[first]} (request {_start(chunk[first].as_py())})")
        return values, row_errors

    async def _predict(
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
        hedgeable = not provider.in_process and self.shares_answers(call)
        started, attempt = time.perf_counter(), 0
        sends = _Sends(self.usage, call, chunk)
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
                    if not error.retryable or attempt > provider.max_retries:
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
                self._record(call, provider, chunk, started, sends.count, None, error, sends.id)
            raise
        self._record(call, provider, chunk, started, sends.count, output, None, sends.id)
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
        reservation = await self._rates.admit(call, chunk, provider.returns_text)
        stalled = False
        if self._coalesces(provider, chunk):
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
                for meter in call.meters:
                    meter.cancel_request()
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
                    for meter in call.meters:
                        meter.cancel_request()
                    raise
                end_request(call.meters, provider, len(chunk), output)
            stalled = place.stalled
        await self._rates.settle(reservation, output, chunk)
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

    @staticmethod
    def _coalesces(provider: Provider, chunk: pa.Array) -> bool:
        """Whether a request joins others to its model (`_coalesce.py`): small requests to an in-process
        tabular model (a text model answers one prompt at a time anyway; a big request is a batch already)."""
        return provider.in_process and not provider.returns_text and len(chunk) <= provider.batch_rows // 4

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

    def _record(
        self,
        call: CallSpec,
        provider: Provider,
        chunk: pa.Array,
        started: float,
        attempts: int,
        output: Any,
        error: BaseException | None,
        request_id: str | None = None,
    ) -> None:
        tokens = output if isinstance(output, Prediction) else Prediction(None)
        status_code = 200 if error is None else getattr(error, "status", None) or 500
        log_request(call, chunk, output, error, time.perf_counter() - started, status_code)
        self.usage.record(
            _usage_row(
                call,
                rows=len(chunk),
                input_tokens=tokens.input_tokens,
                output_tokens=tokens.output_tokens,
                latency_ms=round((time.perf_counter() - started) * 1000, 3),
                status="ok" if error is None else "error",
                attempts=attempts,
                error=None if error is None else describe(error),
                request_id=request_id or uuid.uuid4().hex,
                status_code=status_code,
                input_chars=text_chars(chunk),
                output_chars=None
                if output is None
                else text_chars(tokens.outputs if isinstance(output, Prediction) else output),
            )
        )

    def _embedder(self, topic_call: CallSpec) -> Callable[[pa.Array], Awaitable[Scored]]:
        async def embed(texts: pa.Array) -> Scored:
            return await self._resolve(topic_call, texts, None)

        return embed

    def _record_guardrail(self, call: CallSpec, decisions: Counter[str]) -> None:
        """A batch's guardrail decisions as one usage row: how many rows, and each reason's count."""
        self.usage.record(
            _usage_row(
                call,
                rows=sum(decisions.values()),
                input_tokens=None,
                output_tokens=None,
                latency_ms=0.0,
                status="guardrail",
                attempts=0,
                error="; ".join(f"{reason}: {count}" for reason, count in sorted(decisions.items())),
            )
        )

    def _unkept(self, endpoint: Endpoint, provider: Provider) -> asyncio.Semaphore:
        """Requests of an endpoint sent but whose answers are not committed yet: at most twice its concurrency
        (once was measured to cost a third of the throughput at 32 in flight: commits lag under load)."""
        key = _identity(endpoint)
        if key not in self._gates:  # only touched on the loop thread
            self._gates[key] = asyncio.Semaphore(2 * provider.concurrency)
        return self._gates[key]

    def _most_in_flight(self, provider: Provider) -> int:
        """The endpoint's requests in flight at most: its own setting, else its kind's default, raised for a
        remote endpoint in a server (`serving_in_flight`), where clients bring the concurrency."""
        if provider.in_process or provider.options.max_concurrency or self.serving_in_flight is None:
            return provider.concurrency
        return max(provider.concurrency, self.serving_in_flight)

    def _limit(self, endpoint: Endpoint, maximum: int, processes: int = 1) -> AdaptiveLimit:
        """The endpoint's in-flight limit in this process: all of it, or its share when `processes` answer
        the same calls at once."""
        key = _identity(endpoint) if processes == 1 else f"{_identity(endpoint)}/{processes}"
        if key not in self._limits:  # only touched on the loop thread
            self._limits[key] = AdaptiveLimit(max(1, maximum // processes))
        return self._limits[key]


class _Sends:
    """A request's sends (first, retries, hedged resends, a coalesced batch sent again): each counted and
    journaled as it goes, under the request's one id."""

    def __init__(self, usage: UsageLog, call: CallSpec, chunk: pa.Array) -> None:
        self.id = uuid.uuid4().hex
        self.count = 0
        self._usage, self._call, self._chunk = usage, call, chunk

    def sent(self) -> None:
        self.count += 1
        self._usage.sending(
            _usage_row(
                self._call,
                rows=len(self._chunk),
                input_tokens=None,
                output_tokens=None,
                latency_ms=0.0,
                status="interrupted",
                attempts=self.count,
                error=None,
                request_id=self.id,
            )
        )


def _usage_row(call: CallSpec, **fields: Any) -> UsageRow:
    """A usage row with what every row of a call carries: endpoint, function, who asked, from where."""
    context = call.context
    return UsageRow(
        ts=usage_now(),
        endpoint=call.endpoint.name,
        endpoint_version=call.endpoint.version,
        kind=call.endpoint.kind,
        function=call.function,
        requester=None if call.principal is None else call.principal.name,
        origin=context.origin,
        client_request_id=context.client_request_id,
        usage_context=json.dumps(dict(context.usage_context)) if context.usage_context else None,
        served_entity=call.endpoint.name,
        **fields,
    )


async def _all_or_nothing(coroutines: list[Coroutine[Any, Any, T]]) -> list[T]:
    """Like gather, but the first failure cancels the rest: a failed query must not go on calling the model."""
    if len(coroutines) == 1:
        return [await coroutines[0]]
    try:
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(c) for c in coroutines]
    except BaseExceptionGroup as failures:
        raise failures.exceptions[0] from None
    return [t.result() for t in tasks]


def _retrieve(task: asyncio.Future[Any]) -> None:
    """A hedged request's loser may fail after the winner answered: its error is expected, not news."""
    if not task.cancelled():
        task.exception()


def _start(value: Any, length: int = 60) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return repr(text if len(text) <= length else text[: length - 3] + "...")


def _identity(endpoint: Endpoint) -> str:
    return endpoint.identity


def _concat(parts: list[Scored], target: pa.DataType) -> Scored:
    if len(parts) == 1:
        return parts[0]
    values = pa.concat_arrays([p[0] for p in parts]) if parts else pa.array([], target)
    return values, list(itertools.chain.from_iterable(p[1] for p in parts))


_default: Runtime | None = None
_default_lock = threading.Lock()


def default_runtime() -> Runtime:
    global _default
    with _default_lock:
        if _default is None:
            _default = Runtime()
        return _default


def _forget_after_fork() -> None:
    """A forked child (multiprocessing's default on Linux) has none of the parent's threads: the parent's
    runtime, whose event loop, store writer and HTTP connections (sockets shared with the parent) live
    there, would hang its first call. The child builds its own on first use; loaded models stay loaded."""
    global _default, _default_lock
    leave_behind(_default)
    _default, _default_lock = None, threading.Lock()


after_fork_in_child(_forget_after_fork)
