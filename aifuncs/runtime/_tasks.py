"""Task functions' rows (ai_classify, ai_summarize, ai_agg...): prompts built from the rows, the model's
replies parsed and checked against the task (a bad reply is that row's error, never the batch's), labels
chosen by embedding where the endpoint is an embedding model, and aggregates reduced in stages."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import pyarrow as pa

from aifuncs._types import to_arrow
from aifuncs.functions.tasks import pack_items
from aifuncs.providers import Provider
from aifuncs.runtime._call import CallSpec, Scored

Predict = Callable[[pa.Array], Awaitable[Any]]  # one model request (with its retries) for these rows

_REDUCE_PROMPT_CHARS = 24_000  # per prompt, for endpoints that state no context size
_REDUCE_MAX_STAGES = 8
_log = logging.getLogger("aifuncs")


async def answer_task(
    call: CallSpec, provider: Provider, chunk: pa.Array, target: pa.DataType, predict: Predict
) -> Scored:
    """A task function's rows: prompts in, replies parsed and checked."""
    task = call.task
    assert task is not None
    if task.answer == "reduce":
        answers = [await _reduce(call, provider, group or [], predict) for group in chunk.to_pylist()]
        return pa.array([a[0] for a in answers], target), [a[1] for a in answers]
    texts = [str(t) for t in chunk.to_pylist()]
    if not provider.returns_text:  # an embedding endpoint: the nearest label wins
        vectors = await predict(pa.array([*task.label_texts(), *texts], pa.string()))
        return task.nearest_labels(to_arrow(vectors, pa.list_(pa.float32())), target, texts)
    prompts, cut = task.prompts(texts, provider.max_prompt_chars)
    if cut:
        _log.warning(
            "%s: %d texts longer than endpoint %r takes (%s characters) were cut to fit",
            call.function, cut, call.endpoint.name, f"{provider.max_prompt_chars:,}",
        )  # fmt: skip
    output = await predict(pa.array(prompts, pa.string()))
    return task.parse(to_arrow(output, pa.string()).to_pylist(), texts, target)


async def _reduce(
    call: CallSpec, provider: Provider, items: list[str | None], predict: Predict
) -> tuple[str | None, str | None]:
    """An aggregate over a group: the values packed into prompts that fit the model's context, answered,
    and the answers combined the same way until one remains (map, then reduce in stages)."""
    task = call.task
    assert task is not None
    room = provider.max_prompt_chars or _REDUCE_PROMPT_CHARS
    pieces = [item for item in items if item is not None and item.strip()]
    for _stage in range(_REDUCE_MAX_STAGES):
        if not pieces:
            return None, None
        groups = pack_items(pieces, room)
        prompts = pa.array([task.items_prompt(group) for group in groups], pa.string())
        answers = [str(a or "").strip() for a in to_arrow(await predict(prompts), pa.string()).to_pylist()]
        if len(groups) == 1:
            return answers[0], None
        pieces = answers
    return None, f"{call.function}: the group did not reduce to one answer in {_REDUCE_MAX_STAGES} stages"
