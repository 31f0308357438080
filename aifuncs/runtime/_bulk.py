"""The runtime's side of the bulk path: how far to read ahead, native thread pools kept from
oversubscribing the CPU while several in-process model calls run at once, and the GIL passed on promptly
between the threads of one bulk query."""

from __future__ import annotations

import contextlib
import functools
import os
import sys
import threading
from collections.abc import Iterator, Sequence
from typing import Any

from aifuncs._fork import after_fork_in_child
from aifuncs.providers import Provider
from aifuncs.runtime._call import CallSpec

_REMOTE_STEP = 1 << 19  # rows read at a time for remote endpoints; a few steps in flight bound the memory
_MIN_SPLIT_ROWS = 1 << 16  # below this, a call's fixed cost outweighs what another core would save


def step_rows(calls: Sequence[CallSpec], providers: Sequence[Provider], total_rows: int | None) -> int:
    """Rows per bulk step. For in-process models each step is one model call per call site: the fewest equal
    steps, in whole rounds of the endpoints' concurrency where each call keeps enough rows to pay for itself,
    none above the endpoints' bulk rows. Equal calls in flight finish together: a remainder call (1M rows
    in calls of 262,144 leave one of 213,568) idles the other cores at the end, and every extra call pays
    a model's fixed cost (~2 ms of schema checks for scikit-learn) and a thread handoff. Remote endpoints
    split each step into their own requests."""
    local = [(c, p) for c, p in zip(calls, providers, strict=True) if p.in_process and c.bulk_rows]
    if not local:
        return _REMOTE_STEP
    cap = max(call.bulk_rows or 0 for call, _ in local)
    if not total_rows:
        return cap
    concurrency = max(provider.concurrency for _, provider in local)
    steps = -(-total_rows // cap)
    whole_rounds = -(-steps // concurrency) * concurrency
    steps = max(steps, min(whole_rounds, total_rows // _MIN_SPLIT_ROWS))
    return -(-total_rows // steps)


def steps_ahead(call_rows: Sequence[int | None], providers: Sequence[Provider], batch_rows: int) -> int:
    """Stream steps to keep in flight so every endpoint has requests enough to fill its concurrency."""
    steps = 1
    for rows, provider in zip(call_rows, providers, strict=True):
        requests_per_step = max(1, -(-batch_rows // (rows or provider.batch_rows)))
        steps = max(steps, -(-provider.concurrency // requests_per_step))
    return steps


@contextlib.contextmanager
def one_native_thread_per_call(concurrent_calls: int) -> Iterator[None]:
    """Several in-process model calls at once, each with its own multi-threaded BLAS/OpenMP pool, oversubscribe
    the CPU and run slower than one call alone (measured: 2 calls on 2 cores, 57 ms with 2 BLAS threads each,
    37 ms with 1). As joblib does for nested parallelism, limit the native pools while the calls run."""
    if concurrent_calls <= 1 or (os.cpu_count() or 1) <= 1:
        yield
        return
    controller = _controller(len(sys.modules))
    if controller is None:  # pragma: no cover - a dependency; without it the calls only run slower
        yield
        return
    with controller.limit(limits=1):
        yield


# Python hands the GIL to a waiting thread only every `sys.getswitchinterval()` (5 ms by default) while
# another runs Python code. A bulk query passes each step through four threads (the reader, the event
# loop, a model thread, back), and a model thread busy in scikit-learn's Python made each handoff wait up
# to 5 ms. Measured in one process, 1M rows in two scikit-learn calls, interleaved, 30 runs a side: the
# median 2-10 ms lower at 1 ms (e.g. 79.5 against 74.9 ms), the best run no worse.
_SWITCH_INTERVAL_S = 0.001
_switching = threading.Lock()
_switch_users = 0
_switch_before = 0.0


@contextlib.contextmanager
def prompt_gil_handoffs(concurrent_calls: int) -> Iterator[None]:
    """A shorter GIL switch interval while in-process model calls run beside the bulk path's other threads,
    restored when the last such query ends (several may overlap on different threads). A process that
    set a shorter interval itself keeps it."""
    global _switch_users, _switch_before
    if concurrent_calls <= 1:
        yield
        return
    with _switching:
        if _switch_users == 0:
            _switch_before = sys.getswitchinterval()
            sys.setswitchinterval(min(_switch_before, _SWITCH_INTERVAL_S))
        _switch_users += 1
    try:
        yield
    finally:
        with _switching:
            _switch_users -= 1
            if _switch_users == 0:
                sys.setswitchinterval(_switch_before)


def _reset_after_fork() -> None:
    # A query of another thread may have been running at the fork: the child must not keep its interval.
    global _switching, _switch_users
    if _switch_users:
        sys.setswitchinterval(_switch_before)
    _switching, _switch_users = threading.Lock(), 0


after_fork_in_child(_reset_after_fork)


@functools.lru_cache(maxsize=1)
def _controller(modules: int) -> Any:
    """The native thread pools of the process, found again only when modules were imported since (a model's
    library may bring its own): `threadpool_limits()` looks anew on each call, ~7 ms with torch and MLflow
    loaded, paid by every bulk query."""
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:  # pragma: no cover
        return None
    return ThreadpoolController()
