"""Config updates without downtime (`PUT .../config`): where the new config has models that run in this
server's model workers, it is staged (GET shows it as `pending_config`, `config_update: IN_PROGRESS`), its
entities load while the old config keeps serving, and then it is applied as the endpoint's next version, or
marked UPDATE_FAILED with the reason while the old config goes on serving. Every server process of the home
loads it before the switch (each watches the pending configs and reports its load; one that does not report
within the load timeout is not waited for, and that is logged); a failure in any of them fails the update. A
config of remote models only has nothing to load: applied at once. Other processes see the switch through the
catalog's revision within a second; requests in flight finish on the config they started with."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request

from aifuncs.catalog import Catalog, Endpoint, Staged
from aifuncs.errors import AifuncsError
from aifuncs.server._entities import endpoint_config
from aifuncs.server._errors import ApiError
from aifuncs.server._shapes import endpoint_object
from aifuncs.session import Session
from aifuncs.workers import ModelWorkers, load_timeout_s, others_loaded

__all__ = ["update_config"]

_log = logging.getLogger("aifuncs.server")
# Options a served entity sets: replaced whole by a new config of one model (others, like prices, stay).
_ENTITY_OPTIONS = ("model_uri", "model", "task", "base_url", "api_key_env", "api_key_secret", "url")


async def update_config(request: Request, session: Session, body: Any) -> dict[str, Any]:
    """PUT .../config: the served entities' settings, as the endpoint's next version (every version kept),
    switched to once their models have loaded."""
    catalog = session.catalog
    current = await run_in_threadpool(catalog.authorize, request.path_params["name"], "manage")
    changes = _changes(current, endpoint_config(body))
    workers: ModelWorkers | None = getattr(request.app.state, "model_workers", None)
    if workers is None:  # models run in this process: nothing to load ahead
        endpoint = await run_in_threadpool(lambda: catalog.update(current.name, **changes))
        return await run_in_threadpool(
            endpoint_object, catalog, endpoint, catalog.permission_level(current.name)
        )
    staged = await run_in_threadpool(lambda: catalog.stage(current.name, **changes))
    if not workers.to_load(staged.endpoint):
        await run_in_threadpool(catalog.apply_staged, staged)
    else:
        tasks: set[asyncio.Task[None]] | None = getattr(request.app.state, "rollouts", None)
        if tasks is None:
            tasks = request.app.state.rollouts = set()
        task = asyncio.ensure_future(_roll_out(catalog, workers, staged))
        tasks.add(task)  # kept until done: a task nobody holds may be collected mid-way
        task.add_done_callback(tasks.discard)
    endpoint = await run_in_threadpool(catalog.get, current.name)
    return await run_in_threadpool(
        endpoint_object, catalog, endpoint, catalog.permission_level(current.name), workers
    )


def _changes(current: Endpoint, config: dict[str, Any]) -> dict[str, Any]:
    """The catalog update a config asks of `current` (served entities replaced whole; one model's options)."""
    if "served_entities" in config or current.entities:  # several models, before or after: replaced whole
        if "served_entities" not in config:
            kind = config.pop("kind")
            config = {"served_entities": [{"name": current.name, "kind": kind, "options": config}]}
        return config
    kind = config.pop("kind")
    if kind != current.kind:
        raise ApiError(
            400,
            "INVALID_PARAMETER_VALUE",
            f"{current.name!r} serves a {current.kind} model; a {kind} one is another endpoint: create it, or delete"
            " this one first.",
        )
    keep = {k: v for k, v in current.options.items() if k not in config and k not in _ENTITY_OPTIONS}
    return {"replace": True, **keep, **config}


async def _roll_out(catalog: Catalog, workers: ModelWorkers, staged: Staged) -> None:
    """Load the staged config's entities here, wait for the other server processes of the home to have loaded
    them too (`aifuncs.workers._watch`), then switch to it (or mark it failed); never raises."""
    name = staged.endpoint.name
    deadline = asyncio.get_running_loop().time() + load_timeout_s(staged.endpoint)
    try:
        failure = await workers.load_staged(catalog, staged)
        if failure is None:
            failure = await others_loaded(catalog, workers, staged, deadline)
        if failure is not None:
            await run_in_threadpool(catalog.fail_staged, staged, failure)
            _log.warning("The config update of %r failed; its current config still serves: %s", name, failure)
            return
        applied = await run_in_threadpool(catalog.apply_staged, staged)
        workers.retire_older(applied)
    except AifuncsError as error:  # replaced by a newer update, or the endpoint deleted meanwhile
        _log.info("The config update of %r was not applied: %s", name, error)
    except Exception:
        _log.exception("The config update of %r failed", name)
