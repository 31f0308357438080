"""Model workers: `aifuncs serve` runs in-process models (mlflow, python, sentence_transformers, llama_cpp) in
worker processes of their own, one pool per endpoint version (served entity).

A model that crashes, hangs or leaks takes down only its worker (replaced; the batch it held tried once more
on another worker, then failed with a 503 naming the endpoint); the server's event loop awaits a socket and
never the model's CPU. Each worker loads the model once, when it starts: a server loads every in-process
endpoint as it starts (`ModelWorkers.start`), and `/health` answers 503 until each has loaded or failed
(`ModelWorkers.health`). Pools grow with the batches waiting, shrink when idle, and with
`scale_to_zero_enabled` release every worker (`_pool.py`). Batches cross as Arrow IPC (`_wire.py`).

    workers = ModelWorkers()
    runtime.set_provider_factory(workers.provider)   # a server's runtime; embedded SQL keeps its own threads
    await workers.start(catalog.list())              # on the server's loop: the models load now

Kinds that stream their answers token by token (llama_cpp) stream from their worker too: pieces cross as they
come, and a caller that goes away stops the model in its worker (`Pool.stream`).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import threading
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from aifuncs._endpoint import Endpoint
from aifuncs.providers import Provider, provider_class
from aifuncs.runtime import Runtime
from aifuncs.workers._pool import Pool, most_workers
from aifuncs.workers._provider import PooledProvider, pooled_class
from aifuncs.workers._watch import StagedWatch, others_loaded

if TYPE_CHECKING:
    from aifuncs.catalog import Catalog, Staged

__all__ = [
    "ModelWorkers",
    "Pool",
    "PooledProvider",
    "load_timeout_s",
    "most_workers",
    "others_loaded",
    "pooled_class",
    "serve_models",
]

_log = logging.getLogger("aifuncs.server")

# The kinds whose models run in workers: a loaded model of the user's, CPU-bound. `forecast` and `document`
# are the project's own light computations and stay in the server's process.
MODEL_KINDS = frozenset({"mlflow", "python", "sentence_transformers", "llama_cpp"})


def pooled(cls: type[Provider]) -> bool:
    return cls.in_process and cls.kind in MODEL_KINDS


class ModelWorkers:
    """A server's worker pools, keyed by endpoint version. `provider` is the runtime's provider factory (any
    thread); `start`, `health` and `close` run on the server's loop."""

    def __init__(self) -> None:
        self._pools: dict[str, Pool] = {}
        self._at_start: set[str] = set()
        self._preloaded: set[str] = set()  # pools loaded ahead of a switch, not asked yet
        self._staged: dict[tuple[str, str], asyncio.Task[str | None]] = {}
        self._watch: StagedWatch | None = None
        self._lock = threading.Lock()
        self.process = f"{socket.gethostname()}:{os.getpid()}"  # as the catalog's load reports name it

    def provider(self, endpoint: Endpoint) -> Provider:
        cls = provider_class(endpoint.kind)
        if not pooled(cls):
            return cls(endpoint)
        return pooled_class(cls)(endpoint, self.pool(endpoint), lambda: self.pool(endpoint))

    def pool(self, endpoint: Endpoint, *, retire_older: bool = True) -> Pool:
        """The pool of this endpoint version, made on first use; older versions of the endpoint retire (not
        while a pending config loads ahead of its switch: the old one still serves)."""
        with self._lock:
            pool = self._pools.get(endpoint.identity)
            if pool is None:
                options = provider_class(endpoint.kind).Options.model_validate(endpoint.options)
                pool = self._pools[endpoint.identity] = Pool(endpoint, options)
                if retire_older:
                    self._retire_before(endpoint)
                    # asked for a version already replaced (a request that began on it): it serves, then goes
                    pool.retired = any(
                        other.endpoint.name == endpoint.name and other.endpoint.version > endpoint.version
                        and not other.retired for other in self._pools.values()
                    )  # fmt: skip
                else:
                    self._preloaded.add(endpoint.identity)
            elif retire_older and endpoint.identity in self._preloaded:  # switched to: the old version goes
                self._preloaded.discard(endpoint.identity)
                self._retire_before(endpoint)
            return pool

    def _retire_before(self, endpoint: Endpoint) -> None:
        for other in self._pools.values():
            if other.endpoint.name == endpoint.name and other.endpoint.version < endpoint.version:
                other.retired = True  # its workers go once idle; requests on its config still finish

    def retire_older(self, endpoint: Endpoint) -> None:
        """The endpoint switched to `endpoint`'s version: pools of older versions release their workers once
        idle (requests that started on them finish there)."""
        with self._lock:
            self._retire_before(endpoint)

    def to_load(self, endpoint: Endpoint) -> list[Endpoint]:
        """The served entities of `endpoint` whose models run in workers and are not loaded here yet."""
        views = []
        for view in _entities(endpoint):
            if not pooled(provider_class(view.kind)):
                continue
            with self._lock:
                pool = self._pools.get(view.identity)
            if pool is None or pool.state()["state"] != "READY":
                views.append(view)
        return views

    async def preload(self, endpoint: Endpoint, timeout_s: float) -> str | None:
        """Load `endpoint`'s in-worker entities ahead of a switch to it (older versions keep serving); None once
        each is READY, else why not (a load failed, or took longer than `timeout_s`)."""
        views = self.to_load(endpoint)
        with self._lock:
            fresh = {view.identity for view in views if view.identity not in self._pools}
        pools = [(view, self.pool(view, retire_older=False)) for view in views]
        for _, pool in pools:
            pool.ensure_running()
        deadline = asyncio.get_running_loop().time() + timeout_s
        failure = None
        for view, pool in pools:
            while failure is None and (state := pool.state())["state"] != "READY":
                if state["state"] == "LOAD_FAILED":
                    failure = f"served entity {view.entity_name!r} failed to load: {state['error']}"
                elif pool.closed:  # released meanwhile: its config was replaced, or the endpoint deleted
                    failure = f"served entity {view.entity_name!r} was released before it loaded"
                elif asyncio.get_running_loop().time() > deadline:
                    failure = f"served entity {view.entity_name!r} did not load within {timeout_s:g} s"
                else:
                    await asyncio.sleep(0.05)
        if (
            failure is not None
        ):  # the config will not serve: its pools go (no retries of a load nobody waits for)
            for view, pool in pools:
                if view.identity in fresh:
                    with self._lock:
                        self._pools.pop(view.identity, None)
                    await pool.close()
        return failure

    def load_staged(self, catalog: Catalog, staged: Staged) -> asyncio.Task[str | None]:
        """Load a staged config's entities here (once, whoever asks: the update's own roll-out and this
        process's watch) and report the outcome to the catalog; the task answers None or why not."""
        key = (staged.endpoint.name, staged.requested_at)
        task = self._staged.get(key)
        if task is None:
            task = self._staged[key] = asyncio.ensure_future(self._load_staged(catalog, staged))
        return task

    async def _load_staged(self, catalog: Catalog, staged: Staged) -> str | None:
        failure = await self.preload(staged.endpoint, load_timeout_s(staged.endpoint))
        try:
            await asyncio.to_thread(catalog.report_load, staged, self.process, failure)
        except Exception:  # the update's roll-out waits for this report until its load timeout
            _log.warning("Reporting the load of %r's new config failed", staged.endpoint.name, exc_info=True)
        return failure

    async def settle_staged(self, staged: Staged, current: Endpoint | None) -> None:
        """A config loaded ahead is no longer pending: kept where the endpoint switched to it (older versions
        retire), its pools closed where it did not (the update failed, or another replaced it)."""
        self._staged.pop((staged.endpoint.name, staged.requested_at), None)
        if current is not None and current.version == staged.endpoint.version:
            self.retire_older(current)
            return
        keep = set() if current is None else {view.identity for view in _entities(current)}
        with self._lock:
            gone = [self._pools.pop(v.identity) for v in _entities(staged.endpoint)
                    if v.identity in self._pools and v.identity not in keep]  # fmt: skip
            self._preloaded.difference_update(p.endpoint.identity for p in gone)
        await asyncio.gather(*(pool.close() for pool in gone), return_exceptions=True)

    def pooled_identities(self) -> set[str]:
        with self._lock:
            return set(self._pools)

    def reconcile(self, known: set[str], current: Iterable[Endpoint]) -> None:
        """The catalog now holds `current` (its endpoints and their pending configs): of the pools `known` before
        it was read, those of versions it no longer holds (deleted, replaced by a config applied elsewhere, made
        again with other options) retire, their workers released once idle; one current again serves on."""
        keep = {view.identity for endpoint in current for view in _entities(endpoint)}
        with self._lock:
            for identity, pool in self._pools.items():
                if identity in known:  # a pool made since the catalog was read is left as it is
                    pool.retired = identity not in keep

    async def sweep(self) -> None:
        """Close the pools that retired and have released every worker (kept, each would keep its scaler and
        its place for as long as the server runs: one per config version ever served)."""
        with self._lock:
            empty = [key for key, pool in self._pools.items() if pool.retired and pool.empty()]
            gone = [self._pools.pop(key) for key in empty]
            self._preloaded.difference_update(empty)
            self._at_start.difference_update(empty)
        await asyncio.gather(*(pool.close() for pool in gone), return_exceptions=True)

    def watch(self, catalog: Catalog) -> None:
        """Watch `catalog`'s pending configs from now on (`_watch.py`): each is loaded here before its switch."""
        self._watch = StagedWatch(self, catalog)
        self._watch.start()

    async def start(self, endpoints: Iterable[Endpoint]) -> None:
        """Start the pools of these endpoints' in-process entities (their models load in the background)."""
        for endpoint in endpoints:
            for view in _entities(endpoint):
                try:
                    cls = provider_class(view.kind)
                    if not pooled(cls):
                        continue
                    pool = self.pool(view)
                except Exception:  # noqa: S112 - a kind not installed, bad options: its requests will say so
                    continue
                self._at_start.add(view.identity)
                pool.ensure_running()

    def states(self) -> dict[str, dict[str, Any]]:
        """Each current pool's state (`Pool.state`), by endpoint name (and entity, where it has several)."""
        with self._lock:
            pools = [p for p in self._pools.values() if not p.retired]
        shown: dict[str, dict[str, Any]] = {}
        for pool in pools:
            entity = getattr(pool.endpoint, "entity", None)
            name = (
                pool.endpoint.name
                if entity in (None, pool.endpoint.name)
                else f"{pool.endpoint.name}/{entity}"
            )
            shown[name] = pool.state()
        return shown

    def deployment(self, view: Endpoint) -> tuple[str, str] | None:
        """A served entity's deployment state as Databricks names it, with a message; None where its model
        does not run in workers (remote models are always ready)."""
        if not pooled(provider_class(view.kind)):
            return None
        with self._lock:
            pool = self._pools.get(view.identity)
        if pool is None:
            return "DEPLOYMENT_CREATING", "The model loads on its first request."
        state = pool.state()
        name = state["state"]
        if name == "LOAD_FAILED":
            return "DEPLOYMENT_FAILED", f"The model failed to load: {state['error']}"
        if name in ("LOADING", "NOT_STARTED"):
            return "DEPLOYMENT_CREATING", "The model is loading."
        if name == "STARTING":
            return "DEPLOYMENT_RECOVERING", "A worker is starting (back from zero, or replacing one)."
        zero = (
            " (scaled to zero: the next request waits for a cold start)" if name == "SCALED_TO_ZERO" else ""
        )
        return "DEPLOYMENT_READY", f"{state['workers']} worker(s){zero}."

    def health(self) -> tuple[int, dict[str, Any]]:
        """What `/health` answers: 503 while a model of an endpoint served since the start is still loading
        for the first time (a load balancer sends nothing yet), then 200, with each endpoint's state; an
        endpoint whose model failed to load is named but does not hold the others back. Never a reason or a
        path: the route is open to anyone."""
        with self._lock:
            pools = [p for p in self._pools.values() if not p.retired]
        states = self.states()
        loading = sorted(
            {p.endpoint.name for p in pools if p.endpoint.identity in self._at_start and p.state()["state"] == "LOADING"}
        )  # fmt: skip
        body: dict[str, Any] = {
            "status": "loading" if loading else "ok",
            "endpoints": {name: state["state"] for name, state in sorted(states.items())},
            "not_ready": sorted(
                name for name, state in states.items() if state["state"] in ("LOADING", "LOAD_FAILED")
            ),
        }
        return (503 if loading else 200), body

    async def close(self) -> None:
        if self._watch is not None:
            await self._watch.close()
        for task in self._staged.values():
            task.cancel()
        with self._lock:
            pools, self._pools = list(self._pools.values()), {}
        await asyncio.gather(*(p.close() for p in pools), return_exceptions=True)


async def serve_models(
    runtime: Runtime, endpoints: Callable[[], Iterable[Endpoint]], catalog: Catalog | None = None
) -> ModelWorkers | None:
    """A server's model workers: its runtime's in-process endpoints answered by them, and those `endpoints()`
    lists loading from now on; with `catalog`, its pending configs loaded before their switch (every server
    process of a home does). None where AIFUNCS_SERVE_MODEL_WORKERS=0 (models run in the server's process)."""
    if os.environ.get("AIFUNCS_SERVE_MODEL_WORKERS", "1").strip().lower() in ("0", "false", "no", "off"):
        return None
    workers = ModelWorkers()
    runtime.set_provider_factory(workers.provider)
    try:
        listed = list(endpoints())
    except Exception:  # a catalog that cannot be read just now: each model loads on its first request
        listed = []
    await workers.start(listed)
    if catalog is not None:
        workers.watch(catalog)
    return workers


def load_timeout_s(endpoint: Endpoint) -> float:
    """How long loading an endpoint's entities may take (the longest of their load timeouts, with a margin)."""
    timeouts = []
    for entity in endpoint.served_entities():
        options = provider_class(entity.kind).Options.model_validate(entity.options)
        timeouts.append(float(getattr(options, "load_timeout_s", 600.0)))
    return max(timeouts, default=600.0) + 5.0


def _entities(endpoint: Endpoint) -> list[Endpoint]:
    """The views of an endpoint's served entities (itself where it serves one model)."""
    entities = getattr(endpoint, "entities", ())
    if not entities:
        return [endpoint]
    view = getattr(endpoint, "served_entity")  # noqa: B009 - served entities are newer than some catalogs
    return [view(entity.name) for entity in entities]
