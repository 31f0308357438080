"""Every server process loads a staged config before the switch.

A config update (`PUT .../config`) is staged in the catalog by whichever server process took it. Each server
process with model workers notes itself as running (`seen_serving`, every few seconds), watches the catalog's
revision (read at most once a second) and, when it changed, its pending configs: it loads each new one in its
own pools and reports READY or FAILED (`report_load`). The process that took the update applies it once every
process seen running has reported (`others_loaded`), so no process's requests wait for a cold load after the
switch. Once a pending config is no longer pending, a process keeps its pools where the endpoint switched to
it (the older versions' workers go once idle) and closes them where it did not (failed, or replaced).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
from typing import TYPE_CHECKING, Any

from aifuncs.catalog._staging import IN_PROGRESS
from aifuncs.errors import ConfigError
from aifuncs.storage import database_failing

if TYPE_CHECKING:
    from aifuncs.catalog import Catalog, Staged
    from aifuncs.workers import ModelWorkers

__all__ = ["LIVE_S", "StagedWatch", "others_loaded"]

_log = logging.getLogger("aifuncs.server")

POLL_S = 1.0  # the revision is read at most once a second anyway
SEEN_EVERY_S = 3.0  # how often a process says it runs
LIVE_S = 10.0  # a process not seen for this long is not waited for (stopped, or killed)


class StagedWatch:
    """One server process's watch over its catalog's pending configs, on the server's loop."""

    def __init__(self, workers: ModelWorkers, catalog: Catalog) -> None:
        self.workers = workers
        self.catalog = catalog
        self._task: asyncio.Task[None] | None = None
        self._loaded: dict[tuple[str, str], Staged] = {}  # pending configs loaded here, not settled yet

    def start(self) -> None:
        self._task = asyncio.ensure_future(self._run())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task
        with contextlib.suppress(Exception):  # a store locked just now: the row ages out (LIVE_S)
            await asyncio.to_thread(self.catalog.forget_serving, self.workers.process)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        revision, seen_at = None, -SEEN_EVERY_S
        failing = False  # the store's passing trouble is said once, not every poll
        while True:
            try:
                if loop.time() - seen_at >= SEEN_EVERY_S:
                    await asyncio.to_thread(self.catalog.seen_serving, self.workers.process)
                    seen_at = loop.time()
                now = await asyncio.to_thread(self.catalog.revision)
                if now != revision:
                    await self._look()
                    revision = now
                await self.workers.sweep()
                if failing:
                    _log.warning("The catalog's pending configs are read again")
                failing = False
            except Exception as error:  # a store unreachable or locked just now: tried again at the next poll
                if isinstance(error, sqlite3.Error) or database_failing(error):
                    if not failing:
                        _log.warning("Reading the catalog's pending configs failed (%s); trying again", error)
                    failing = True
                else:
                    _log.warning("Reading the catalog's pending configs failed; trying again", exc_info=True)
            await asyncio.sleep(POLL_S)

    async def _look(self) -> None:
        known = self.workers.pooled_identities()
        pending = await asyncio.to_thread(self.catalog.staged_configs)
        endpoints = await asyncio.to_thread(self.catalog.served_endpoints)
        # pools of versions the catalog no longer holds (deleted, replaced) release their workers
        self.workers.reconcile(known, [*endpoints, *(staged.endpoint for staged in pending)])
        keys = set()
        for staged in pending:
            key = (staged.endpoint.name, staged.requested_at)
            keys.add(key)
            if key not in self._loaded:
                self._loaded[key] = staged
                self.workers.load_staged(self.catalog, staged)
        for key in [k for k in self._loaded if k not in keys]:  # applied, failed or replaced since
            staged = self._loaded.pop(key)
            try:
                current = await asyncio.to_thread(self.catalog.get, staged.endpoint.name)
            except Exception:
                current = None  # deleted
            await self.workers.settle_staged(staged, current)


async def others_loaded(
    catalog: Catalog, workers: ModelWorkers, staged: Staged, deadline: float
) -> str | None:
    """Wait until every other server process seen running has loaded `staged` (reported READY): None then, or
    the first failure reported. A process that has not reported by `deadline` (the loop's time) is not waited
    for: its stall is logged (its requests will wait for the load)."""
    loop = asyncio.get_running_loop()
    while True:
        # Replaced by a newer update (or the endpoint deleted: UnknownEndpoint) meanwhile: nobody loads this one
        # any more, and a manager's burst of updates must not leave a poller each until its load timeout.
        pending = await asyncio.to_thread(catalog.pending, staged.endpoint.name)
        if pending is None or (pending.requested_at, pending.state) != (staged.requested_at, IN_PROGRESS):
            raise ConfigError(
                f"The config update of {staged.endpoint.name!r} asked at {staged.requested_at} was replaced by a"
                " newer one."
            )
        live = set(await asyncio.to_thread(catalog.serving_processes, LIVE_S)) - {workers.process}
        loads: dict[str, Any] = await asyncio.to_thread(catalog.loads, staged)
        for process, (state, message) in sorted(loads.items()):
            if state != "READY":
                return f"{message} (server process {process})"
        waiting = sorted(live - set(loads))
        if not waiting:
            return None
        if loop.time() > deadline:
            _log.warning(
                "Switching %r to its new config without server process(es) %s: not loaded in time; their"
                " requests wait for the load",
                staged.endpoint.name, ", ".join(waiting),
            )  # fmt: skip
            return None
        await asyncio.sleep(0.2)
