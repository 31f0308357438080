"""Reusable answers: keeping a request's answers in the store, and putting together the answers of a
batch's distinct requests from what was scored, stored, or answered by another batch."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from aifuncs._types import arrow_type
from aifuncs.runtime._call import CallSpec, Scored
from aifuncs.runtime._distinct import from_json_texts
from aifuncs.runtime._store import AnswerStore


async def keep_answers(
    store: AnswerStore, endpoint: str, keys: list[bytes], values: pa.Array, errors: list[str | None]
) -> None:
    """Store a request's answers (never its failures)."""
    if errors.count(None) != len(errors):
        answered = [i for i, e in enumerate(errors) if e is None]
        keys, values = [keys[i] for i in answered], values.take(pa.array(answered, pa.int64()))
    await store.put(endpoint, keys, values)


def assemble(
    call: CallSpec, count: int, todo: list[int], scored: Scored, texts: dict[int, str], errors: dict[int, str]
) -> Scored:
    """Answers for the distinct requests, in their order, from what was scored, stored or answered elsewhere."""
    target = arrow_type(call.result_type)
    if len(todo) == count:
        return scored
    order = list(texts)
    parts = [scored[0], from_json_texts([texts[i] for i in order], call.result_type, target)]
    position = np.empty(count, dtype=np.int64)
    position[todo] = np.arange(len(todo))
    position[order] = len(todo) + np.arange(len(order))
    failed = list(errors)
    if failed:
        parts.append(pa.nulls(len(failed), target))
        position[failed] = len(todo) + len(order) + np.arange(len(failed))
    values = pa.concat_arrays(parts).take(pa.array(position))
    row_errors: list[str | None] = [None] * count
    for i, error in zip(todo, scored[1], strict=True):
        row_errors[i] = error
    for i, error in errors.items():
        row_errors[i] = error
    return values, row_errors
