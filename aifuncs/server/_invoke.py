"""`POST /serving-endpoints/{name}/invocations`: a request body to Arrow rows, and the answers back to JSON.

Tabular bodies are MLflow's scoring formats: exactly one of `dataframe_split`, `dataframe_records`, `instances`,
`inputs` (with optional `params`), answered as `{"predictions": [...]}` the way `mlflow models serve` does.
The rows go through the same planner binding and runtime as SQL: the policy check, rate limits (429 with the
real wait, never a queue), guardrails, usage and inference logs, batching and retries.
"""

from __future__ import annotations

import contextvars
import dataclasses
import math
import threading
import time
from collections.abc import Callable
from typing import Any

import pyarrow as pa

from aifuncs.runtime import CallSpec, Meter, RequestContext
from aifuncs.server._errors import ApiError
from aifuncs.session import Session, bind_call, bind_key
from aifuncs.session import request_context as make_context

__all__ = ["Bindings", "NotKept", "Prepared", "prepare", "prepare_on_loop", "request_context"]

_FORMATS = ("dataframe_split", "dataframe_records", "instances", "inputs")


def _bad(message: str) -> ApiError:
    return ApiError(400, "INVALID_PARAMETER_VALUE", message)


def _rows(body: dict[str, Any]) -> pa.Array:
    given = [f for f in _FORMATS if f in body]
    if len(given) != 1:
        raise _bad(
            f"Give exactly one of {', '.join(_FORMATS)} (found {', '.join(given) or 'none'}); chat, completions and"
            " embeddings bodies go to an endpoint that serves them."
        )
    value = body[given[0]]
    if given[0] == "dataframe_split":
        if (
            not isinstance(value, dict)
            or not isinstance(value.get("columns"), list)
            or not isinstance(value.get("data"), list)
        ):
            raise _bad('dataframe_split is {"columns": [...], "data": [[...], ...]}.')
        columns = value["columns"]
        if any(not isinstance(row, list) or len(row) != len(columns) for row in value["data"]):
            raise _bad(f"Each row of dataframe_split.data has {len(columns)} values, one per column.")
        records = [dict(zip(columns, row, strict=True)) for row in value["data"]]
    elif isinstance(value, dict) and given[0] == "inputs":  # columnar: {"a": [...], "b": [...]}
        lengths = {len(v) if isinstance(v, list) else -1 for v in value.values()}
        if len(lengths) != 1 or -1 in lengths:
            raise _bad("inputs as an object maps each column to a list of values, all of one length.")
        names = list(value)
        records = [dict(zip(names, row, strict=True)) for row in zip(*value.values(), strict=True)]
    elif isinstance(value, list):
        records = value
    else:
        raise _bad(f"{given[0]} is a list of rows.")
    if not records:
        raise _bad(f"{given[0]} has no rows.")
    try:
        if all(isinstance(r, dict) for r in records):
            return pa.array(records)  # a struct array, one field per key (from_pylist costs twice as much)
        if any(isinstance(r, dict) for r in records):
            raise _bad("Rows are either all objects (one field per column) or all plain values.")
        return pa.array(records)
    except (pa.ArrowInvalid, pa.ArrowTypeError) as error:
        raise _bad(f"The rows do not make a table: {error}.") from None


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    return value


def request_context(body: dict[str, Any]) -> RequestContext:
    """The usage log's account of a REST request: its `client_request_id` and `usage_context`, checked as
    `aifuncs.sql` checks them."""
    return make_context("rest", body.get("usage_context"), body.get("client_request_id"))


# A request's binding (the policy check, the endpoint's limits, guardrails and logs) is kept for a second by
# `bind_key`: the caller's session (the principal with every field), endpoint, request shape and the catalog's
# revision. A change to grants, gateway settings or the endpoint takes a new binding as soon as this process
# reads the new revision (within a second); the second's expiry bounds what the revision does not count (a
# group's members). Each request brings its own context and meters.
_BIND_TTL_S = 1.0
_KEPT_MOST = 10_000


_kept_only: contextvars.ContextVar[bool] = contextvars.ContextVar("kept_only", default=False)


class NotKept(Exception):
    """The binding is not kept: bind in a worker thread (the catalog is SQLite)."""


def prepare_on_loop(prepare_body: Callable[..., Prepared], *args: Any) -> Prepared | None:
    """`prepare_body(*args)` if it needs no binding made afresh (no SQLite on the event loop), else None."""
    token = _kept_only.set(True)
    try:
        return prepare_body(*args)
    except NotKept:
        return None
    finally:
        _kept_only.reset(token)


class Bindings:
    """The bound calls of one app's query routes, each kept for `_BIND_TTL_S` by its `bind_key`."""

    def __init__(self) -> None:
        self._kept: dict[str, tuple[float, CallSpec]] = {}
        self._lock = threading.Lock()

    def bound(
        self,
        session: Session,
        name: str,
        request_type: pa.DataType,
        params: dict[str, Any] | None,
        meters: tuple[Meter, ...] = (),
    ) -> CallSpec:
        """The call `session` makes of endpoint `name` for rows of `request_type`, with the session's context
        and meters (then `meters`). Under `prepare_on_loop`, NotKept unless it is kept (no SQLite read)."""
        kept_only = _kept_only.get()
        if kept_only and not self._kept:
            raise NotKept  # the first binding also opens the catalog
        catalog = session.base_catalog
        revision = catalog.known_revision() if kept_only else catalog.revision()
        if revision is None:  # reading it is SQLite: not on the event loop
            raise NotKept
        key = bind_key(session, "ai_query", name, request_type, revision, model_parameters=params)
        now = time.monotonic()
        with self._lock:
            found = self._kept.get(key)
        if found is not None and now - found[0] <= _BIND_TTL_S:
            call = found[1]
        elif kept_only:
            raise NotKept
        else:
            # bound without this request's labels and client id: the kept call (its topic check's included)
            # carries no one request's
            plain = session.derive(context=RequestContext(session.context.origin), budgets=(), progress=None)
            call = bind_call("ai_query", name, request_type, model_parameters=params, session=plain)
            with self._lock:
                if len(self._kept) > _KEPT_MOST:
                    self._kept.clear()
                self._kept[key] = (now, call)
        return dataclasses.replace(call, context=session.context, meters=(*session.meters, *meters))


Prepared = tuple[CallSpec, pa.Array, Callable[[pa.Array], dict[str, Any]]]


def prepare(bindings: Bindings, name: str, body: Any, session: Session) -> Prepared:
    """A scoring body as the call to make (in `session`, labelled with the body's usage context and client
    request id), its rows, and how to word the answers."""
    if not isinstance(body, dict):
        raise _bad("The request body is a JSON object.")
    params = body.get("params")
    if params is not None and not isinstance(params, dict):
        raise _bad("params is an object of the model's parameters.")
    labelled = session.derive(context=request_context(body))
    rows = _rows(body)
    call = bindings.bound(labelled, name, rows.type, params)
    return call, rows, lambda answers: {"predictions": _json_safe(answers.to_pylist())}
