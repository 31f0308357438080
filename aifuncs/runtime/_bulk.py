"""The runtime's side of the bulk path: how far to read ahead, and native thread pools kept from
oversubscribing the CPU while several in-process model calls run at once."""

from __future__ import annotations

import contextlib
import functools
import os
import sys
from collections.abc import Iterator, Sequence
from typing import Any

from aifuncs.providers import Provider
from aifuncs.runtime._call import CallSpec


def steps_ahead(calls: Sequence[CallSpec], providers: Sequence[Provider], step_rows: int) -> int:
    """Stream steps to keep in flight so every endpoint has requests enough to fill its concurrency."""
    steps = 1
    for call, provider in zip(calls, providers, strict=True):
        requests_per_step = max(1, -(-step_rows // (call.bulk_rows or provider.batch_rows)))
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
