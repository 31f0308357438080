"""Answering one batch of a call site: NULL requests dropped, guardrails applied, each distinct reusable
request asked once (not at all when the answer store or a job's checkpoint holds it, not again while another
batch of this process asks it), the failure policy applied, answers scattered back into row order."""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from aifuncs._home import home_file
from aifuncs._types import arrow_type
from aifuncs.catalog import Endpoint
from aifuncs.errors import ModelError
from aifuncs.providers import Provider
from aifuncs.runtime._accounting import record_guardrail
from aifuncs.runtime._call import CallSpec, Failure, Scored
from aifuncs.runtime._distinct import answer_keys, distinct, every_row, to_json_texts
from aifuncs.runtime._guard import guarded
from aifuncs.runtime._policy import answer_identity, deterministic, reuse
from aifuncs.runtime._reuse import assemble, keep_answers
from aifuncs.runtime._routing import Router
from aifuncs.runtime._scoring import Scorer
from aifuncs.runtime._store import AnswerStore
from aifuncs.runtime._usage import UsageLog

_log = logging.getLogger("aifuncs")
Answer = tuple[str | None, str | None]  # an answer as stored (JSON text), or the error that stands for it


class Answers:
    """One runtime's batches; the requests in flight are touched on the loop thread only."""

    def __init__(self, provider: Callable[[Endpoint], Provider], scorer: Scorer, usage: UsageLog) -> None:
        self._provider = provider
        self.router = Router(scorer, self.screened)
        self._usage = usage
        self._lock = threading.Lock()
        self._stores: dict[Path, AnswerStore] = {}
        self._asking: dict[bytes, asyncio.Future[Answer]] = {}  # requests in flight, by key
        self._awaited: set[bytes] = set()  # ...and those another batch waits for

    async def answer(
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
            lambda sendable: self.resolve(call, sendable, batch_rows),
            lambda decisions: record_guardrail(self._usage, call, decisions),
            None if call.topic_call is None else self.embedder(call.topic_call),
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

    async def screened(self, call: CallSpec, requests: pa.Array) -> Scored:
        """Answers of non-null requests through the call's guardrails and reuse, with each row's error as it
        came (a fallback endpoint's, asked by the router for the rows every entity failed)."""
        return await guarded(
            call,
            requests,
            lambda sendable: self.resolve(call, sendable, None),
            lambda decisions: record_guardrail(self._usage, call, decisions),
            None if call.topic_call is None else self.embedder(call.topic_call),
        )

    def embedder(self, topic_call: CallSpec) -> Callable[[pa.Array], Awaitable[Scored]]:
        async def embed(texts: pa.Array) -> Scored:
            return await self.resolve(topic_call, texts, None)

        return embed

    async def resolve(self, call: CallSpec, requests: pa.Array, batch_rows: int | None) -> Scored:
        """Where answers are reusable, send each distinct request once: not at all when the store has its
        answer, and not again while another batch of this process is asking it (another DuckDB thread,
        another vector)."""
        provider = self._provider(call.endpoint)
        reused = reuse(call, provider)
        if reused is None:
            return await self.router.score(call, requests, batch_rows)
        checkpoint = call.checkpoint
        store = self.store() if reused == "store" else checkpoint.store if checkpoint else None
        # A sampling model's answers are kept for a job's rerun, but two equal requests still get two.
        sampled = reused == "checkpoint" and not deterministic(call, provider)
        unique = await asyncio.to_thread(every_row if sampled else distinct, requests)
        keys = answer_keys(answer_identity(call, provider, requests.type), unique.texts)
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
                scored = await self.router.score(call, values, batch_rows, [keys[i] for i in todo], keep)
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
        provider = self._provider(call.endpoint)
        return provider.accepts_chunks and call.task is None and reuse(call, provider) is None

    def stored(self, call: CallSpec, request_type: pa.DataType, texts: list[str]) -> int:
        """How many of these distinct requests (canonical JSON, as `to_json_texts` writes them) the store
        can answer for this call: what EXPLAIN reports as cached."""
        provider = self._provider(call.endpoint)
        if reuse(call, provider) != "store" or not texts:
            return 0
        keys = answer_keys(answer_identity(call, provider, request_type), texts)
        return len(self.store().lookup(keys))

    def store(self) -> AnswerStore:
        path = home_file("answers.db")
        with self._lock:
            found = self._stores.get(path)
            if found is None:
                found = self._stores[path] = AnswerStore(path)
            return found
