"""Small concurrent requests to one in-process model, sent to it together.

A model server answering many clients one row at a time pays the model's fixed cost (a pandas frame, a
predict call) per row. Here requests of the same call shape that arrive while the model is busy wait for its
next turn and go in one predict, each getting its own slice of the answers back: batching while busy, as
model servers do, with no wait at all when the model is idle. Everything around the model call stays per
request: its rate-limit admission, usage row, inference-log row and errors.

A batch that fails is sent again one request at a time, so one bad request fails alone; each request is told
(`resent`) that it goes once more, so its usage row counts the failed batch among its attempts. A request whose
caller gave up meanwhile is not sent again: its row is written already, and would not count that call.
"""

from __future__ import annotations

import asyncio
import json
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from aifuncs.providers import Provider
from aifuncs.providers.base import CallOptions, Prediction

__all__ = ["Coalescer"]

Predict = Callable[[pa.Array], Awaitable[Any]]


@dataclass
class _Waiting:
    rows: pa.Array | pa.ChunkedArray
    answer: asyncio.Future[Any]
    resent: Callable[[], None] | None = None


@dataclass
class _Line:
    waiting: deque[_Waiting] = field(default_factory=deque)
    turns: int = 0  # batches of this line being answered now


class Coalescer:
    """Lines of waiting requests, one per provider and call shape (touched on the runtime's loop only)."""

    def __init__(self) -> None:
        self._lines: dict[tuple[Any, ...], _Line] = {}

    async def predict(
        self,
        provider: Provider,
        options: CallOptions,
        rows: pa.Array,
        send: Predict,
        turns: int,
        most_rows: int,
        resent: Callable[[], None] | None = None,
    ) -> Any:
        """`send(rows)` for these rows, possibly as part of a bigger batch: the output for these rows only.
        At most `turns` batches of a line are answered at once, each of at most `most_rows` rows (a request
        bigger than that goes alone)."""
        key = (
            id(provider),
            json.dumps(options.parameters, sort_keys=True, default=str),
            options.response_format,
            options.result_type,
            str(rows.type),
        )
        line = self._lines.get(key)
        if line is None:
            line = self._lines[key] = _Line()
        answer: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        line.waiting.append(_Waiting(rows, answer, resent))
        if line.turns < turns:
            line.turns += 1
            asyncio.ensure_future(self._drain(key, line, send, most_rows))
        return await answer

    async def _drain(self, key: tuple[Any, ...], line: _Line, send: Predict, most_rows: int) -> None:
        """Answer batches of the line until nobody waits."""
        try:
            while line.waiting:
                batch = [line.waiting.popleft()]
                size = len(batch[0].rows)
                while line.waiting and size + len(line.waiting[0].rows) <= most_rows:
                    waiting = line.waiting.popleft()
                    batch.append(waiting)
                    size += len(waiting.rows)
                batch = [w for w in batch if not w.answer.done()]  # a caller that gave up
                if batch:
                    try:
                        await _answer(batch, send)
                    except Exception as error:  # a bug of ours: those waiting hear of it, never hang
                        for waiting in batch:
                            if not waiting.answer.done():
                                waiting.answer.set_exception(error)
        except BaseException:  # cancelled (the loop is closing): nobody is left waiting for nothing
            for waiting in line.waiting:
                waiting.answer.cancel()
            line.waiting.clear()
            raise
        finally:
            line.turns -= 1
            if not line.turns and not line.waiting:
                self._lines.pop(key, None)


async def _answer(batch: list[_Waiting], send: Predict) -> None:
    if len(batch) == 1:
        await _alone(batch[0], send)
        return
    try:
        rows = pa.concat_arrays([c for w in batch for c in _chunks(w.rows)])
        output = await send(rows)
        parts = _split(output, [len(w.rows) for w in batch])
    except asyncio.CancelledError:
        raise
    except Exception:  # one of them may be the cause: each is sent alone, and fails alone
        for waiting in batch:
            if waiting.answer.done():  # its caller gave up: a call nobody waits for would go uncounted
                continue
            if waiting.resent is not None:
                waiting.resent()
            await _alone(waiting, send)
        return
    for waiting, part in zip(batch, parts, strict=True):
        if not waiting.answer.done():
            waiting.answer.set_result(part)


async def _alone(waiting: _Waiting, send: Predict) -> None:
    try:
        output = await send(waiting.rows)
    except asyncio.CancelledError:
        if not waiting.answer.done():
            waiting.answer.cancel()
        raise
    except Exception as error:
        if not waiting.answer.done():
            waiting.answer.set_exception(error)
        return
    if not waiting.answer.done():
        waiting.answer.set_result(output)


def _chunks(rows: pa.Array | pa.ChunkedArray) -> list[pa.Array]:
    return rows.chunks if isinstance(rows, pa.ChunkedArray) else [rows]


def _splittable(output: Any) -> bool:
    return isinstance(output, (pa.Array, pa.ChunkedArray, np.ndarray, pd.Series, pd.DataFrame, list, tuple))


def _split(output: Any, sizes: list[int]) -> list[Any]:
    """A batch's output cut back into its requests' parts, each of the type the model returned."""
    if isinstance(output, Prediction):  # token counts belong to the batch: each part reports none
        return [Prediction(part) for part in _split(output.outputs, sizes)]
    if not _splittable(output) or len(output) != sum(sizes):
        raise ValueError("the output cannot be cut into its requests' answers")
    parts, start = [], 0
    for size in sizes:
        if isinstance(output, (pa.Array, pa.ChunkedArray)):
            parts.append(output.slice(start, size))
        elif isinstance(output, (pd.Series, pd.DataFrame)):
            parts.append(output.iloc[start : start + size])
        else:
            parts.append(output[start : start + size])
        start += size
    return parts
