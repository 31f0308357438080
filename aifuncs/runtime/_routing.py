"""Routing a batch over an endpoint's served entities: each row to one entity by the route weights, and with
`fallback_config` a row its entity failed (after the retries: 429, 5xx, a timeout, unreachable) to the other
entities in list order, then to the fallback endpoint.

Rows whose answers are reused pick their entity by a hash of the request (its answer key), so the same request
always reaches the same entity and de-duplication, the answer store and a job's resumption agree; other rows
pick at random by the weights. Each entity is asked only for its own rows, in the batches its provider takes.
A request answered by a fallback carries the usage label `fallback_from` (the entity that failed it first), and
every usage and inference row names the entity that answered (`served_entity`)."""

from __future__ import annotations

import contextlib
import dataclasses
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterator
from contextvars import ContextVar
from typing import Any

import numpy as np
import pyarrow as pa

from aifuncs._types import arrow_type
from aifuncs.catalog import Endpoint
from aifuncs.errors import ModelError, RemoteError
from aifuncs.runtime._call import CallSpec, EntityFailure, Failure, Scored
from aifuncs.runtime._meter import Meter, TokenTally
from aifuncs.runtime._scoring import Keep, Scorer, _all_or_nothing

FALLBACK_LABEL = "fallback_from"
# The whole answer path of a call's non-null requests (guardrails, reuse, limits, routing): answers and each
# row's error, its kind kept (an EntityFailure says the endpoint was unavailable, not the request at fault).
AnswerAll = Callable[[CallSpec, pa.Array], Awaitable[Scored]]

# The entities that answered the requests of the current task (a server's request names its entity in the
# `served-model-name` header); None where nobody asks.
_answered_by: ContextVar[list[str] | None] = ContextVar("aifuncs_answered_by", default=None)


@contextlib.contextmanager
def entities_answering() -> Iterator[list[str]]:
    """Collect the served entities that answer the calls made inside the block (in the order they answered)."""
    names: list[str] = []
    token = _answered_by.set(names)
    try:
        yield names
    finally:
        _answered_by.reset(token)


class Router:
    """Sends a call's rows to its endpoint's served entities; its random source is its own."""

    def __init__(self, scorer: Scorer, answer_all: AnswerAll) -> None:
        self._scorer = scorer
        self._answer_all = answer_all  # the whole answer path (guardrails, limits), for a fallback endpoint
        self._random = np.random.default_rng()

    async def score(
        self,
        call: CallSpec,
        requests: pa.Array,
        batch_rows: int | None,
        keys: list[bytes] | None = None,
        keep: Keep | None = None,
    ) -> Scored:
        endpoint = call.endpoint
        if not endpoint.split and not chained(call):  # one model, nothing to fall back to
            scored = await self._scorer.score(call, requests, batch_rows, keys, keep)
            _tell(endpoint.entity_name, scored[1])
            return scored
        entities = [e.name for e in endpoint.served_entities()]
        # Asked of each entity with failures kept per row: the policy of the call applies at the end.
        asked = dataclasses.replace(call, failure=Failure.RECORD) if call.fallback else call
        count = len(requests)
        origin = self.pick(endpoint, count, keys)
        step = np.zeros(count, dtype=np.int64)  # fallbacks taken so far, per row
        parts: list[pa.Array] = []
        where = np.zeros(count, dtype=np.int64)  # each row's answer in the concatenated parts
        errors: list[str | None] = [None] * count
        # Rows grouped per entity with numpy: a bulk step may hold a million rows (no per-row Python here).
        pending: dict[tuple[int, int | None], Any] = {}
        for entity in range(len(entities)):
            rows = np.flatnonzero(origin == entity)
            if len(rows):
                pending[(entity, None)] = rows
        exhausted: list[int] = []
        # A request that has a fallback left goes there at once, not after its entity's retries.
        no_retries = dataclasses.replace(asked, max_retries=0) if call.fallback else asked
        fallbacks_after = len(entities) - 1 if call.fallback else 0

        def last_chance(round_: int) -> bool:
            return round_ >= fallbacks_after and not chained(call)

        first_round, round_ = True, 0
        while pending:
            if not first_round:
                pending = {key: np.asarray(rows, dtype=np.int64) for key, rows in pending.items()}
            groups = list(pending.items())
            pending = defaultdict(list)
            results = await _all_or_nothing(
                [
                    self._scorer.score(
                        _entity_call(
                            asked if last_chance(round_) else no_retries,
                            endpoint,
                            entities[entity],
                            None if came is None else entities[came],
                        ),
                        requests if len(rows) == count else requests.take(pa.array(rows, pa.int64())),
                        batch_rows,
                        None if keys is None else [keys[r] for r in rows],
                        keep,
                    )
                    for (entity, came), rows in groups
                ]
            )
            for ((entity, _), rows), (values, row_errors) in zip(groups, results, strict=True):
                offset = sum(len(p) for p in parts)
                parts.append(values)
                where[rows] = offset + np.arange(len(rows))
                _tell(entities[entity], row_errors)
                if row_errors.count(None) == len(row_errors):  # the usual case: no row to walk
                    for row in () if first_round else np.asarray(rows).tolist():  # answered by a fallback
                        errors[row] = None
                    continue
                for row, error in zip(np.asarray(rows).tolist(), row_errors, strict=True):
                    errors[row] = error
                    if error is None or not call.fallback or not isinstance(error, EntityFailure):
                        continue
                    others = [i for i in range(len(entities)) if i != origin[row]]
                    if step[row] < len(others):
                        pending[(others[step[row]], entity)].append(row)
                        step[row] += 1
                    else:
                        exhausted.append(row)
            first_round, round_ = False, round_ + 1
        if exhausted and chained(call):
            await self._fall_back(call, requests, exhausted, parts, where, errors)
        target = arrow_type(call.result_type)
        if len(parts) == 1:  # one entity answered every row, in order
            values = parts[0]
        else:
            values = pa.concat_arrays(parts).take(pa.array(where)) if parts else pa.array([], target)
        if call.fail_on_error and errors.count(None) < count:
            failed = [e for e in errors if e is not None]
            raise ModelError(endpoint.name, len(failed), failed[0]) from _unavailable(failed)
        return values, errors

    def candidates(self, call: CallSpec) -> list[CallSpec]:
        """For one request answered on its own (a stream): the entity it goes to by the weights, then, with
        fallback_config, the endpoint's other entities in list order."""
        endpoint = call.endpoint
        if not endpoint.split:
            calls = [call]
        else:
            entities = [e.name for e in endpoint.served_entities()]
            first = int(self.pick(endpoint, 1, None)[0])
            others = [i for i in range(len(entities)) if i != first] if call.fallback else []
            calls = [_entity_call(call, endpoint, entities[first], None)] + [
                _entity_call(call, endpoint, entities[i], entities[first]) for i in others
            ]
        # Each but the last chance goes on to its fallback at once, not after its retries.
        return [
            dataclasses.replace(c, max_retries=0) if i < len(calls) - 1 or chained(call) else c
            for i, c in enumerate(calls)
        ]

    async def answer_fallback(self, call: CallSpec, requests: pa.Array) -> Scored:
        """Requests every entity failed, asked of the fallback endpoint (whole, through its answer path)."""
        parts: list[pa.Array] = []
        where = np.zeros(len(requests), dtype=np.int64)
        errors: list[str | None] = [None] * len(requests)
        await self._fall_back(call, requests, list(range(len(requests))), parts, where, errors)
        return parts[0], errors

    def pick(self, endpoint: Endpoint, count: int, keys: list[bytes] | None) -> np.ndarray:
        """Each row's served entity (its index in list order): by the route weights, from a hash of the
        row's answer key where it has one, else at random."""
        shares = [e.traffic_percentage for e in endpoint.served_entities()]
        # Each of the 100 draws names its entity (90/10: draws 0-89 the first, 90-99 the second)
        table = np.repeat(np.arange(len(shares), dtype=np.int8), shares)  # at most 10 entities
        if keys is not None:  # the first 8 bytes of each answer key (a hash), as one array
            draws = np.frombuffer(b"".join(k[:8].ljust(8, b"\0") for k in keys), dtype=">u8") % 100
        else:
            draws = self._random.integers(0, 100, count)  # (int64: numpy draws small types more slowly)
        return table.take(draws)

    async def _fall_back(
        self,
        call: CallSpec,
        requests: pa.Array,
        rows: list[int],
        parts: list[pa.Array],
        where: np.ndarray,
        errors: list[str | None],
    ) -> None:
        """The rows every entity failed, asked of the fallback endpoint through its own whole answer path."""
        assert call.fallback_call is not None
        fallback = dataclasses.replace(
            call.fallback_call, failure=Failure.RECORD, meters=_requests_only(call.meters)
        )
        fallback = _labelled(fallback, call.endpoint.name)
        values, row_errors = await self._answer_all(fallback, requests.take(pa.array(rows, pa.int64())))
        offset = sum(len(p) for p in parts)
        parts.append(values)
        where[rows] = offset + np.arange(len(rows))
        for row, error in zip(rows, row_errors, strict=True):
            errors[row] = error


def chained(call: CallSpec) -> bool:
    """Whether rows every entity failed go on to a fallback endpoint: not when the caller chose one entity
    (`/served-models/{entity}/invocations` asks that entity alone, as its name says)."""
    return call.fallback_call is not None and call.endpoint.entity is None


def _unavailable(failed: list[str]) -> RemoteError | None:
    """What a failed call is raised from when the first failure is an entity's (or a fallback endpoint's)
    being unavailable rather than the request at fault: a REST caller then gets a 503 (or the 429) to retry,
    not a 400; a refusal of the request itself (a fallback's guardrail) stays the caller's 400."""
    first = failed[0]
    if not isinstance(first, EntityFailure):
        return None
    return RemoteError(str(first), status=first.status, retryable=True)


def _entity_call(call: CallSpec, endpoint: Endpoint, entity: str, came_from: str | None) -> CallSpec:
    narrowed = dataclasses.replace(call, endpoint=endpoint.served_entity(entity))
    return narrowed if came_from is None else _labelled(narrowed, came_from)


def _labelled(call: CallSpec, came_from: str) -> CallSpec:
    """The call with the usage label that says which entity (or endpoint) failed its rows first."""
    labels = tuple(item for item in call.context.usage_context if item[0] != FALLBACK_LABEL)
    context = dataclasses.replace(call.context, usage_context=(*labels, (FALLBACK_LABEL, came_from)))
    return dataclasses.replace(call, context=context)


def answering_now() -> str | None:
    """The served entity that answered last in the current task (None: none yet, or nobody asks)."""
    names = _answered_by.get()
    return names[-1] if names else None


def tell_answered(entity: str) -> None:
    """Say that `entity` answered a request of the current task (a stream's, once its first piece came)."""
    _tell(entity, [None])


def _tell(entity: str, errors: list[str | None]) -> None:
    names = _answered_by.get()
    if names is not None and errors.count(None):
        names.append(entity)


class _RequestsOnly:
    """A meter of the query seen from a fallback endpoint's answer path: told of its requests (a budget may
    refuse them), not of its rows, which the query's own batch counts once."""

    def __init__(self, meter: Meter) -> None:
        self._meter = meter

    def begin_request(self) -> None:
        self._meter.begin_request()

    def end_request(self, rows: int, tokens: int, cost_usd: float | None) -> None:
        self._meter.end_request(rows, tokens, cost_usd)

    def cancel_request(self) -> None:
        self._meter.cancel_request()

    def answered(self, rows: int, failed: int = 0) -> None:
        pass

    def paced(self, limit: str) -> None:
        self._meter.paced(limit)


def _requests_only(meters: tuple[Meter, ...]) -> tuple[Meter, ...]:
    return tuple(m if isinstance(m, TokenTally) else _RequestsOnly(m) for m in meters)
