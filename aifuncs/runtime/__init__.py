"""The runtime: the only caller of providers.

An engine hands it one batch of requests for one call site; the runtime drops NULL requests, splits
the rest into requests sized for the endpoint, runs them concurrently on one background event loop,
converts the answers to the call's type and puts them back in row order, with per-row errors.

`Runtime` is a facade over modules with one job each: `_bridge.py` (callers' threads to the event loop),
`_answers.py` (a batch: NULLs, guardrails, reuse through the answer store, the failure policy),
`_policy.py` (whether and by whom answers may be reused), `_scoring.py` (requests sized, sent
concurrently, failures bisected), `_sending.py` (one request: limits, retries, hedging, coalescing) and
`_accounting.py` (the journal, usage and inference-log rows every request leaves).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Awaitable, Callable, Iterable, Sequence

import pyarrow as pa

from aifuncs._fork import after_fork_in_child, leave_behind
from aifuncs.catalog import Endpoint
from aifuncs.providers import Provider, provider_class
from aifuncs.runtime import _policy
from aifuncs.runtime._accounting import describe
from aifuncs.runtime._answers import Answers
from aifuncs.runtime._bridge import LoopBridge, score_stream
from aifuncs.runtime._budget import Budget, session_budget, set_session_budget
from aifuncs.runtime._bulk import step_rows
from aifuncs.runtime._call import CallSpec, Failure, RequestContext, Scored
from aifuncs.runtime._limit import AdaptiveLimit
from aifuncs.runtime._meter import Meter, TokenTally
from aifuncs.runtime._rate import RateGate
from aifuncs.runtime._routing import FALLBACK_LABEL, Router, answering_now, entities_answering
from aifuncs.runtime._scoring import Scorer
from aifuncs.runtime._sending import Sender
from aifuncs.runtime._store import AnswerStore
from aifuncs.runtime._usage import UsageLog

__all__ = [
    "FALLBACK_LABEL",
    "Budget",
    "CallSpec",
    "Failure",
    "Meter",
    "RequestContext",
    "Runtime",
    "TokenTally",
    "answering_now",
    "default_runtime",
    "describe",
    "entities_answering",
    "session_budget",
    "set_session_budget",
]


ProviderFactory = Callable[[Endpoint], Provider]


class Runtime:
    def __init__(self, provider_factory: ProviderFactory | None = None) -> None:
        self._providers: dict[str, Provider] = {}
        # Builds the provider of an endpoint version: by default its kind's class, in this process; a server
        # may hand in-process kinds to model worker processes instead (`set_provider_factory`).
        self._provider_factory: ProviderFactory = provider_factory or _in_this_process
        self._lock = threading.Lock()
        self.usage = UsageLog()
        self._bridge = LoopBridge()
        self._sender = Sender(self.usage)
        self._answers = Answers(self.provider, Scorer(self.provider, self._sender), self.usage)

    # Set by a server: remote endpoints without a max_concurrency of their own may have this many requests
    # in flight (a batch query's default of 16 would queue a gateway's clients behind it).
    @property
    def serving_in_flight(self) -> int | None:
        return self._sender.serving_in_flight

    @serving_in_flight.setter
    def serving_in_flight(self, value: int | None) -> None:
        self._sender.serving_in_flight = value

    def provider(self, endpoint: Endpoint) -> Provider:
        """The provider of an endpoint version, built once (models load once per process)."""
        key = endpoint.identity
        with self._lock:
            provider = self._providers.get(key)
            if provider is None:
                provider = self._provider_factory(endpoint)
                self._providers[key] = provider
            return provider

    def set_provider_factory(self, factory: ProviderFactory) -> None:
        """Build providers with `factory` from now on (providers built already are dropped from the cache: the
        next call of each endpoint builds its provider anew)."""
        with self._lock:
            self._provider_factory = factory
            self._providers.clear()

    def run_call(self, call: CallSpec, requests: pa.Array, *, batch_rows: int | None = None) -> pa.Array:
        """Answer one batch for a call site: one value per request, NULL for NULL requests.

        `batch_rows` overrides the endpoint's rows per model call (the planner's bulk path).
        """
        return self.submit_call(call, requests, batch_rows=batch_rows).result()

    def submit_call(
        self, call: CallSpec, requests: pa.Array | pa.ChunkedArray, *, batch_rows: int | None = None
    ) -> concurrent.futures.Future[pa.Array]:
        """`run_call` without waiting: the answers arrive in the returned future."""
        return self._bridge.submit(call.context, self._answers.answer(call, requests, batch_rows))

    def cancel_calls(self, context: RequestContext, timeout_s: float = 30.0) -> None:
        """Cancel one caller's submitted calls still running (a stopped job's: its engine was interrupted, but
        the batches it handed over would go on sending) and wait until each has ended, so no request leaves
        afterwards and those in flight are in the usage log when this returns."""
        self._bridge.cancel(context, timeout_s)

    async def answer_call(self, call: CallSpec, requests: pa.Array) -> pa.Array:
        """`run_call` from a coroutine: on the runtime's loop itself when the caller runs there (a server
        that adopted it: `adopt_loop`), else handed to it."""
        if self._bridge.running_here():
            return await self._answers.answer(call, requests, None)
        return await asyncio.wrap_future(self.submit_call(call, requests))

    def adopt_loop(self, loop: asyncio.AbstractEventLoop) -> bool:
        """Run this process's model calls on `loop` (a server's own, running on the calling thread) rather
        than on a thread of the runtime's; False if the runtime's loop runs already."""
        return self._bridge.adopt(loop)

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
        return score_stream(self.submit_call, providers, calls, batches, step)

    def reuse(self, call: CallSpec) -> str | None:
        """How answers of this call may be reused: "store", "query", "checkpoint" or None (`_policy.reuse`)."""
        return _policy.reuse(call, self.provider(call.endpoint))

    def shares_answers(self, call: CallSpec) -> bool:
        """Whether rows with the same request may share one answer within a query (`_policy.shares_answers`)."""
        return _policy.shares_answers(call, self.provider(call.endpoint))

    def stored(self, call: CallSpec, request_type: pa.DataType, texts: list[str]) -> int:
        """How many of these distinct requests (canonical JSON, as `to_json_texts` writes them) the store
        can answer for this call: what EXPLAIN reports as cached."""
        return self._answers.stored(call, request_type, texts)

    # The parts a streamed reply (`_stream.py`) and the benchmarks reach.
    @property
    def _rates(self) -> RateGate:
        return self._sender.rates

    @property
    def _limits(self) -> dict[str, AdaptiveLimit]:
        return self._sender.limits

    def _limit(self, endpoint: Endpoint, maximum: int, processes: int = 1) -> AdaptiveLimit:
        return self._sender.limit(endpoint, maximum, processes)

    def _most_in_flight(self, provider: Provider) -> int:
        return self._sender.most_in_flight(provider)

    def _router(self) -> Router:
        return self._answers.router

    def _embedder(self, topic_call: CallSpec) -> Callable[[pa.Array], Awaitable[Scored]]:
        return self._answers.embedder(topic_call)

    def _store(self) -> AnswerStore:
        return self._answers.store()


def _in_this_process(endpoint: Endpoint) -> Provider:
    return provider_class(endpoint.kind)(endpoint)


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
