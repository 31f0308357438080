"""Guardrails on the request path: screen the texts going into a model and the answers coming out.

Every text counts, whatever the row's shape: a plain text, a chat's messages (system ones too), a record's
fields, an HTTP request's body, nested lists and maps; and every text of an answer (a STRUCT's fields too).

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
from typing import Any

import pyarrow as pa

from aifuncs._types import arrow_type
from aifuncs.errors import GuardrailBlocked
from aifuncs.governance.guardrails import (
    Guard,
    Screened,
    off_topic,
    screen,
    screen_parameters,
    screen_values,
    texts_in,
)
from aifuncs.runtime._call import CallSpec, Failure, Scored
from aifuncs.runtime._payloads import log_request

Resolve = Callable[[pa.Array], Awaitable[Scored]]


def _is_text(values: pa.DataType) -> bool:
    return pa.types.is_string(values) or pa.types.is_large_string(values) or pa.types.is_string_view(values)


def _has_text(values: pa.DataType) -> bool:
    """Whether values of this type can hold a text anywhere (a STRUCT's field, a list's item, a map's entry)."""
    if _is_text(values):
        return True
    if pa.types.is_struct(values):
        return any(_has_text(f.type) for f in values)
    if pa.types.is_map(values):
        return _has_text(values.key_type) or _has_text(values.item_type)
    if pa.types.is_list(values) or pa.types.is_large_list(values) or pa.types.is_fixed_size_list(values):
        return _has_text(values.value_type)
    if pa.types.is_dictionary(values):
        return _has_text(values.value_type)
    return False


def _screen(guard: Guard, values: pa.Array) -> tuple[pa.Array, Screened]:
    """Every text of every row through `guard`, whatever the rows' shape: the rows to use (blocked ones NULL,
    masked ones masked) and the guard's account."""
    if _is_text(values.type):
        screened = screen(guard, values.to_pylist())
        plain = pa.string() if pa.types.is_string_view(values.type) else values.type
        return pa.array(screened.texts, plain), screened
    screened = screen_values(guard, values.to_pylist())
    if any(screened.blocked) or screened.decisions.total():
        return pa.array(screened.texts, values.type), screened
    return values, screened


def _topic_text(value: Any) -> str | None:
    """What a row is about, for valid_topics: its texts, one a line (None: a row without text)."""
    texts = [t for t in texts_in(value) if t.strip()]
    return "\n".join(texts) if texts else None


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
    if rails is None or not rails.active:
        return await resolve(requests)
    if isinstance(requests, pa.ChunkedArray):  # a provider that takes chunks: screened as one array
        requests = await asyncio.to_thread(requests.combine_chunks)
    raises = call.failure is Failure.RAISE
    decisions: Counter[str] = Counter()
    blocked: list[str | None] = [None] * len(requests)
    reasons: list[str | None] = [None] * len(requests)  # the guard's own words, for the query's error
    send = requests
    if rails.input.active and (_has_text(requests.type) or call.parameters):
        values, screened = await asyncio.to_thread(_screen, rails.input, requests)
        decisions.update({f"input: {k}": v for k, v in screened.decisions.items()})
        reasons = list(screened.blocked)
        if parameters := screen_parameters(rails.input, call.parameters):  # sent with every row
            decisions[f"input: {parameters}"] += sum(1 for r in reasons if r is None)
            reasons = [r or parameters for r in reasons]
        if rails.input.valid_topics and embed is not None:
            if off := await _check_topics(rails.input, values, screened.texts, reasons, embed):
                decisions["input: off topic"] += off
        blocked = [None if r is None else f"blocked by the input guardrail: {r}" for r in reasons]
        send = values if not any(blocked) else values.filter(pa.array([b is None for b in blocked]))
    try:
        if raises and any(blocked):
            raise _refuse(call, "input", next(r for r in reasons if r))
        # every row blocked: no answers, of the answers' type (not the requests')
        values, errors = (
            await resolve(send) if len(send) else (pa.array([], arrow_type(call.result_type)), [])
        )
        if rails.output.active and _has_text(values.type):
            values, answers = await asyncio.to_thread(_screen, rails.output, values)
            decisions.update({f"output: {k}": v for k, v in answers.decisions.items()})
            if raises and any(answers.blocked):
                raise _refuse(call, "output", next(b for b in answers.blocked if b))
            errors = [
                e if b is None else f"blocked by the output guardrail: {b}"
                for e, b in zip(errors, answers.blocked, strict=True)
            ]
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


async def _check_topics(
    guard: Guard, values: pa.Array, rows: list[Any], reasons: list[str | None], embed: Resolve
) -> int:
    """Block (in `reasons`) each row not yet blocked whose texts are off every topic, and count them; a row
    without text has no topic to check."""
    texts = rows if _is_text(values.type) else [_topic_text(r) for r in rows]
    positions = [i for i, (t, r) in enumerate(zip(texts, reasons, strict=True)) if r is None and t]
    if not positions:
        return 0
    asked = pa.array([texts[i] for i in positions] + list(guard.valid_topics), pa.string())
    vectors, _ = await embed(asked)
    listed = vectors.to_pylist()
    found = off_topic(
        listed[: len(positions)], listed[len(positions) :], guard.valid_topics, guard.topic_threshold
    )
    for position, reason in zip(positions, found, strict=True):
        if reason is not None:
            reasons[position] = reason
    return sum(1 for r in found if r is not None)
