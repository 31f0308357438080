"""Guardrails on the request path: screen the texts going into a model and the answers coming out.

Rows the input guard blocks are never sent; masked rows are sent masked (and keyed so in the answer store).
Answers the output guard blocks are withheld. A blocked row is a per-row error ("blocked by the input
guardrail: pii (card)"), NULL for task functions, or the query's error under failOnError. Each decision is
counted in the usage log with its reason (status "guardrail"), and a blocked row is an inference-table row
without payload.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Awaitable, Callable

import pyarrow as pa

from aifuncs.errors import GuardrailBlocked
from aifuncs.governance.guardrails import off_topic, screen
from aifuncs.runtime._call import CallSpec, Scored
from aifuncs.runtime._payloads import log_request

Resolve = Callable[[pa.Array], Awaitable[Scored]]


def _is_text(values: pa.Array) -> bool:
    return (
        pa.types.is_string(values.type)
        or pa.types.is_large_string(values.type)
        or pa.types.is_string_view(values.type)
    )


def _refuse(call: CallSpec, side: str, reason: str) -> GuardrailBlocked:
    return GuardrailBlocked(
        f"Endpoint {call.endpoint.name!r}: a row was blocked by the {side} guardrail ({reason}). Remove it, or"
        " pass failOnError => false to get the other rows and an error for this one."
    )


async def guarded(
    call: CallSpec,
    requests: pa.Array,
    resolve: Resolve,
    record: Callable[[Counter[str]], None],
    embed: Resolve | None = None,
) -> Scored:
    rails = call.guardrails
    if rails is None or not rails.active or not _is_text(requests):
        return await resolve(requests)
    raises = call.fail_on_error and not call.null_on_error
    decisions: Counter[str] = Counter()
    blocked: list[str | None] = [None] * len(requests)
    send = requests
    if rails.input.active:
        screened = await asyncio.to_thread(screen, rails.input, requests.to_pylist())
        decisions.update({f"input: {k}": v for k, v in screened.decisions.items()})
        blocked = [None if b is None else f"blocked by the input guardrail: {b}" for b in screened.blocked]
        send = pa.array([t for t, b in zip(screened.texts, blocked, strict=True) if b is None], pa.string())
        if rails.input.valid_topics and embed is not None and len(send):
            topics = pa.array(list(rails.input.valid_topics), pa.string())
            vectors, _ = await embed(pa.concat_arrays([send, topics]))
            listed = vectors.to_pylist()
            reasons = off_topic(
                listed[: len(send)],
                listed[len(send) :],
                rails.input.valid_topics,
                rails.input.topic_threshold,
            )
            positions = [i for i, b in enumerate(blocked) if b is None]
            for position, reason in zip(positions, reasons, strict=True):
                if reason is not None:
                    blocked[position] = f"blocked by the input guardrail: {reason}"
                    screened.blocked[position] = reason
                    decisions["input: off topic"] += 1
            send = pa.array([screened.texts[i] for i, b in enumerate(blocked) if b is None], pa.string())
    try:
        if raises and any(blocked):
            raise _refuse(call, "input", next(b for b in screened.blocked if b))
        values, errors = await resolve(send) if len(send) else (pa.array([], send.type), [])
        if rails.output.active and _is_text(values):
            answers = await asyncio.to_thread(screen, rails.output, values.to_pylist())
            decisions.update({f"output: {k}": v for k, v in answers.decisions.items()})
            if raises and any(answers.blocked):
                raise _refuse(call, "output", next(b for b in answers.blocked if b))
            errors = [
                e if b is None else f"blocked by the output guardrail: {b}"
                for e, b in zip(errors, answers.blocked, strict=True)
            ]
            values = pa.array(answers.texts, values.type)
    finally:
        if decisions:
            record(decisions)
            for _ in range(sum(1 for b in blocked if b)):
                log_request(call, requests.slice(0, 0), None, None, None, 400)
    if not any(blocked):
        return values, errors
    # the blocked rows back in their places: no value, their reason as the error
    sent = iter(range(len(values)))
    order = [None if b else next(sent) for b in blocked]
    full = values.take(pa.array(order, pa.int64()))
    full_errors = [b if b else errors[i] for b, i in zip(blocked, order, strict=True)]  # type: ignore[index]
    return full, full_errors
