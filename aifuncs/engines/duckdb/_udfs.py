"""The functions aifuncs registers on a DuckDB connection: the per-call UDFs, the per-row `ai_query`, and the
side channel that finds the typed error behind the message DuckDB raised."""

from __future__ import annotations

import collections
import functools
import json
import threading
import weakref
from collections.abc import Callable
from typing import Any

import duckdb
import pyarrow as pa

from aifuncs._fork import renewed_in_child
from aifuncs._types import decode_json, to_arrow
from aifuncs.errors import AifuncsError
from aifuncs.runtime import CallSpec, Runtime, session_budget
from aifuncs.session import Session, bind_call


def _udf(
    con: duckdb.DuckDBPyConnection, name: str, fn: Callable[..., pa.Array], params: list[str], returns: str
) -> None:
    # special null handling: NULL rows reach us (no silent drops); side effects: never folded or run twice.
    con.create_function(  # type: ignore[call-overload]  # the stubs accept no arrow UDFs returning pa.Array
        name, fn, params, returns, type="arrow", null_handling="special", side_effects=True
    )
    with _registered_lock:
        _registered.setdefault(con, set()).add(name)


# The functions aifuncs registered per connection: asking duckdb_functions() costs ~10 ms a time.
_registered: weakref.WeakKeyDictionary[duckdb.DuckDBPyConnection, set[str]] = weakref.WeakKeyDictionary()
_registered_lock = threading.Lock()
renewed_in_child(globals(), "_registered_lock")


def _has_function(con: duckdb.DuckDBPyConnection, name: str) -> bool:
    with _registered_lock:
        known = _registered.setdefault(con, set())
    if name in known:
        return True
    rows = con.execute("SELECT 1 FROM duckdb_functions() WHERE function_name = ? LIMIT 1", [name]).fetchall()
    if rows:
        known.add(name)
    return bool(rows)


def _binding_key(call: CallSpec, request_ddl: str | None, revision: int) -> str:
    """What a registered function is bound to: its call's key (every field: a function found by this key is
    used as it was bound), its request type, and the catalog's revision (a governance change gets a new
    function, whatever an open connection registered before)."""
    return json.dumps([call.key(), request_ddl, revision])


@functools.cache
def _volatile() -> frozenset[str]:
    """DuckDB's volatile functions (random, nextval...), read once per process: the query takes ~20 ms."""
    with duckdb.connect() as probe:
        rows = probe.execute(
            "SELECT DISTINCT function_name FROM duckdb_functions() WHERE stability = 'VOLATILE'"
        ).fetchall()
    return frozenset(name for (name,) in rows) | {"__aifuncs_ai_query"}


# The typed errors a UDF raised lately, by message: DuckDB hands the caller a duckdb.Error with the message,
# and `typed_error` finds the typed one again (RateLimited with its wait, GuardrailBlocked...).
_raised: collections.OrderedDict[str, AifuncsError] = collections.OrderedDict()
_RAISED_KEPT = 64


def _remembered(fn: Callable[..., pa.Array]) -> Callable[..., pa.Array]:
    @functools.wraps(fn)
    def udf(*args: pa.Array) -> pa.Array:
        try:
            return fn(*args)
        except AifuncsError as error:
            with _registered_lock:
                _raised[str(error)] = error
                while len(_raised) > _RAISED_KEPT:
                    _raised.popitem(last=False)
            raise

    return udf


def typed_error(error: BaseException) -> AifuncsError | None:
    """The aifuncs error behind a duckdb.Error a query raised while DuckDB ran an AI function, if any."""
    if isinstance(error.__cause__, AifuncsError):
        return error.__cause__
    text = str(error)
    with _registered_lock:
        for message, typed in reversed(_raised.items()):
            if message in text:
                return typed
    return None


def _typed_call(call: CallSpec, runtime: Runtime) -> Callable[[pa.Array], pa.Array]:
    @_remembered
    def udf(request: pa.Array) -> pa.Array:
        return runtime.run_call(call, _as_array(request))

    return udf


def _json_call(call: CallSpec, runtime: Runtime) -> Callable[[pa.Array], pa.Array]:
    @_remembered
    def udf(request_json: pa.Array) -> pa.Array:
        return runtime.run_call(call, decode_json(_as_array(request_json)))

    return udf


def _as_array(values: pa.Array | pa.ChunkedArray) -> pa.Array:
    return values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values


def _generic_ai_query(session: Session) -> Callable[..., pa.Array]:
    """The plain-connection ai_query: any endpoint per row, answers as VARCHAR."""
    runtime = session.runtime

    @_remembered
    def udf(
        endpoint: pa.Array,
        request: pa.Array,
        return_type: pa.Array,
        fail_on_error: pa.Array,
        parameters: pa.Array,
        response_format: pa.Array,
        cache: pa.Array,
    ) -> pa.Array:
        columns = [
            _as_array(c) for c in (endpoint, return_type, fail_on_error, parameters, response_format, cache)
        ]
        options = pa.Table.from_arrays(columns, names=["e", "t", "f", "p", "r", "c"])
        requests = _as_array(request)
        result: list[Any] = [None] * len(requests)
        groups = (
            options.append_column("i", pa.array(range(len(requests)), pa.int64()))
            .group_by(["e", "t", "f", "p", "r", "c"], use_threads=False)
            .aggregate([("i", "list")])
        )
        for group in groups.to_pylist():
            rows = pa.array(group["i_list"], pa.int64())
            if group["e"] is None:
                continue  # NULL endpoint: NULL answer
            call = bind_call(
                "ai_query",
                group["e"],
                None,
                return_type=group["t"],
                fail_on_error=True if group["f"] is None else group["f"],
                model_parameters=json.loads(group["p"]) if group["p"] else None,
                response_format=group["r"],
                cache=group["c"],
                session=session,
                meters=tuple(b for b in (session_budget(),) if b is not None),
            )
            values = runtime.run_call(call, decode_json(requests.take(rows)))
            for row, text in zip(group["i_list"], _as_text(values).to_pylist(), strict=True):
                result[row] = text
        return pa.array(result, pa.string())

    return udf


def _as_text(values: pa.Array) -> pa.Array:
    return to_arrow(values, pa.string())
