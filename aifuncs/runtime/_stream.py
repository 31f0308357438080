"""One chat or completions request answered as the model writes it: the runtime's streamed path.

It keeps every rule of a request that is not streamed: the guardrails (`_guard.guarded`, input screened before
anything is sent), the endpoint's rate limits (a token reservation settled to what was used), its in-flight
limit, the call's meters (budgets), the usage journal before the request goes (a process killed mid-stream
leaves an "interrupted" row), and once at the end one usage row and one inference row with the whole answer,
its tokens and its time to first piece (`ttft_ms`).

With output guardrails the answer cannot be judged piece by piece (a masked card number may span two pieces,
a blocked word the whole answer): it is held until the model has finished, screened whole, and only then
handed on (masked where the guard masks). The caller's first piece then comes when the model has finished.

A failure before the first piece is an ordinary error (the caller has sent nothing yet: retries of a
retryable failure happen here, and so will a fallback to another served entity); after it, the error ends the
stream. Closing the iterator (a client that went away) cancels the upstream request; the usage row then says
what was paid: the pieces received so far, status "error", status code 499.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from collections.abc import AsyncGenerator
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from aifuncs.errors import AifuncsError, ModelError, RemoteError
from aifuncs.providers._chat import Streams, can_stream
from aifuncs.providers.base import CallOptions, Prediction, Provider
from aifuncs.runtime._accounting import usage_row
from aifuncs.runtime._call import CallSpec, EntityFailure, Scored
from aifuncs.runtime._guard import guarded
from aifuncs.runtime._limit import backoff_s
from aifuncs.runtime._meter import begin_request, cancel_request, end_request
from aifuncs.runtime._payloads import log_request
from aifuncs.runtime._rate import text_chars
from aifuncs.runtime._routing import answering_now, chained, tell_answered
from aifuncs.runtime._scoring import row_error

if TYPE_CHECKING:
    from aifuncs.runtime import Runtime

__all__ = ["ClientGone", "stream_answer", "streams"]

_END = object()


class ClientGone(Exception):
    """The caller stopped reading the stream (its client disconnected)."""


def streams(runtime: Runtime, call: CallSpec) -> bool:
    """Whether this call's endpoint can answer piece by piece, whichever of its served entities answers (else
    the whole answer comes as one piece)."""
    endpoint = call.endpoint
    return all(
        can_stream(runtime.provider(endpoint.served_entity(e.name))) for e in endpoint.served_entities()
    )


async def stream_answer(
    runtime: Runtime, call: CallSpec, requests: pa.Array
) -> AsyncGenerator[str | Prediction, None]:
    """The answer to a one-row request as text pieces, then one `Prediction` with the tokens used.

    Run it on the runtime's loop (a server's, `Runtime.adopt_loop`). Errors raised before the first piece are
    the request's error; the caller may close the iterator at any time."""
    router = runtime._router()
    candidates = router.candidates(call)  # its served entity by the weights, then the fallbacks
    if len(requests) != 1 or not streams(runtime, call):
        raise AifuncsError(f"Endpoint {call.endpoint.name!r} does not stream its answers.")
    rails = call.guardrails
    held = rails is not None and rails.output.active  # the whole answer is screened before any of it goes
    pieces: asyncio.Queue[Any] = asyncio.Queue()
    tokens: list[Prediction] = []
    handed: list[str] = []
    answering: list[str] = []  # the entity being asked

    def hand_on(piece: str) -> None:
        if not handed:  # the caller's first piece: say which entity answers (the served-model-name header)
            tell_answered(answering[-1])
        handed.append(piece)
        pieces.put_nowait(piece)

    async def resolve(sendable: pa.Array) -> Scored:
        # A fallback happens only before the first piece reached the caller (then the answer is that entity's).
        for tried, candidate in enumerate(candidates, start=1):
            provider = runtime.provider(candidate.endpoint)
            answering.append(candidate.endpoint.entity_name)
            try:
                text, used = await _streamed(
                    runtime, provider, candidate, sendable, None if held else hand_on
                )
            except RemoteError as error:
                if handed or not call.fallback or not isinstance(row_error(error), EntityFailure):
                    raise
                if tried < len(candidates):
                    continue
                if not chained(call):
                    raise
                assert call.fallback_call is not None
                values, errors = await router.answer_fallback(call, sendable)  # answered whole
                if errors[0] is not None:  # the fallback's own answer (e.g. its guardrail), as unstreamed
                    raise ModelError(call.endpoint.name, 1, errors[0]) from None
                answer = values[0].as_py()
                # whoever answered for the fallback endpoint (its own entity, or its own fallback) told already
                answering.append(answering_now() or call.fallback_call.endpoint.entity_name)
                if not held and answer:
                    hand_on(str(answer))
                return pa.array([answer], pa.string()), [None]
            if not handed:  # held for the output guardrails: told now
                tell_answered(candidate.endpoint.entity_name)
            tokens.append(used)
            return pa.array([text], pa.string()), [None]
        raise AssertionError("a call has at least one served entity")

    def record(decisions: Counter[str]) -> None:
        runtime.usage.record(
            usage_row(call, rows=sum(decisions.values()), input_tokens=None, output_tokens=None, latency_ms=0.0,
                      status="guardrail", attempts=0,
                      error="; ".join(f"{reason}: {count}" for reason, count in sorted(decisions.items())))
        )  # fmt: skip

    embed = None if call.topic_call is None else runtime._embedder(call.topic_call)
    work = asyncio.ensure_future(guarded(call, requests, resolve, record, embed))
    work.add_done_callback(lambda _: pieces.put_nowait(_END))
    try:
        while (piece := await pieces.get()) is not _END:
            yield piece
        values, errors = work.result()  # raises the request's error (a blocked row raises under failOnError)
        if errors[0] is not None:
            raise AifuncsError(errors[0])
        if held and values[0].as_py():
            yield values[0].as_py()  # screened whole, masked where the guard masks
        yield tokens[0] if tokens else Prediction(None)
    finally:
        if not work.done():
            work.cancel()
            await asyncio.wait([work])  # the upstream request is closed and its usage row written first


async def _streamed(
    runtime: Runtime, provider: Provider, call: CallSpec, chunk: pa.Array, hand_on: Any
) -> tuple[str, Prediction]:
    """Send one streamed request (retried while nothing came back yet), hand each piece on as it comes, and
    account for it once: what was received, whatever ends it."""
    assert isinstance(provider, Streams)
    options = CallOptions(call.parameters, call.response_format, call.result_type)
    limit = runtime._limit(call.endpoint, runtime._most_in_flight(provider), call.processes)
    request_id, attempts, started = uuid.uuid4().hex, 0, time.perf_counter()
    received: list[str] = []
    first_s: float | None = None
    used = Prediction(None)
    reservation = None
    try:
        while True:
            reservation = await runtime._rates.admit(call, chunk, True)
            try:
                async with limit:
                    begin_request(call.meters)
                    attempts += 1
                    runtime.usage.sending(usage_row(call, rows=1, input_tokens=None, output_tokens=None, latency_ms=0.0,
                                                    status="interrupted", attempts=attempts, error=None,
                                                    request_id=request_id))  # fmt: skip
                    try:
                        async for piece in provider.stream(chunk, options):
                            if isinstance(piece, Prediction):
                                used = piece
                                continue
                            if first_s is None:
                                first_s = time.perf_counter() - started
                            received.append(piece)
                            if hand_on is not None:
                                hand_on(piece)
                    except BaseException:
                        cancel_request(call.meters)
                        raise
                break
            except RemoteError as error:
                # Nothing reached the caller yet: the request may be asked again (a fallback goes here too).
                if received or not error.retryable or attempts > call.retries(provider.max_retries):
                    raise
                await runtime._rates.settle(reservation, Prediction(None, 0, 0), chunk)
                reservation = None
                if error.status == 429:
                    limit.throttled(error.retry_after)
                await asyncio.sleep(backoff_s(attempts, provider.retry_base_s, error.retry_after))
    except BaseException as error:
        if attempts:  # sent: paid for, and accounted for with what came back
            partial = Prediction(["".join(received)], used.input_tokens, used.output_tokens)
            gone = isinstance(error, asyncio.CancelledError | GeneratorExit)
            failure: BaseException = (
                ClientGone(f"the client went away after {len(received)} pieces") if gone else error
            )
            status_code = 499 if gone else getattr(error, "status", None) or 500
            await _settle(runtime, reservation, partial, chunk)
            _account(
                runtime, call, chunk, partial, failure, started, first_s, attempts, request_id, status_code
            )
        raise
    text = "".join(received)
    output = Prediction([text], used.input_tokens, used.output_tokens)
    end_request(call.meters, provider, 1, output)
    await _settle(runtime, reservation, output, chunk)
    limit.succeeded(None)  # a stream's length is the answer's, not a sign of queueing
    _account(runtime, call, chunk, output, None, started, first_s, attempts, request_id, 200)
    return text, Prediction(None, used.input_tokens, used.output_tokens)


async def _settle(runtime: Runtime, reservation: Any, output: Prediction, chunk: pa.Array) -> None:
    if reservation is not None:
        await asyncio.shield(runtime._rates.settle(reservation, output, chunk))


def _account(
    runtime: Runtime,
    call: CallSpec,
    chunk: pa.Array,
    output: Prediction,
    error: BaseException | None,
    started: float,
    first_s: float | None,
    attempts: int,
    request_id: str,
    status_code: int,
) -> None:
    seconds = time.perf_counter() - started
    log_request(call, chunk, output, error, seconds, status_code)
    runtime.usage.record(
        usage_row(
            call,
            rows=1,
            input_tokens=output.input_tokens,
            output_tokens=output.output_tokens,
            latency_ms=round(seconds * 1000, 3),
            status="ok" if error is None else "error",
            attempts=attempts,
            error=None if error is None else _describe(error),
            request_id=request_id,
            status_code=status_code,
            input_chars=text_chars(chunk),
            output_chars=text_chars(output.outputs),
            ttft_ms=None if first_s is None else round(first_s * 1000, 3),
        )
    )


def _describe(error: BaseException) -> str:
    text = str(error) if isinstance(error, AifuncsError | ClientGone) else f"{type(error).__name__}: {error}"
    return text[:1000]
