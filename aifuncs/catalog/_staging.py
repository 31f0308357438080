"""Config updates that wait for their models: staged, then applied or failed (zero-downtime updates).

A server whose new config holds models to load (`aifuncs serve`'s model workers) stages it: the pending
config is stored beside the endpoint (GET shows it, `config_update: IN_PROGRESS`) while the old config keeps
serving; once the new entities have loaded it is applied as the endpoint's next version (every process and
connection sees the switch through the revision within a second), or marked UPDATE_FAILED with the reason,
the old config still serving. Requests in flight finish on the config they started with.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from aifuncs._endpoint import Endpoint, ServedEntity
from aifuncs.catalog._parts import CatalogPart
from aifuncs.errors import AifuncsError, ConfigError, UnknownEndpoint

IN_PROGRESS, UPDATE_FAILED = "IN_PROGRESS", "UPDATE_FAILED"
READY, FAILED = "READY", "FAILED"  # one server process's load of a pending config


@dataclass(frozen=True)
class Staged:
    """A pending config: the endpoint it will be (at its next version), when it was asked for, its state."""

    endpoint: Endpoint
    requested_at: str
    state: str = IN_PROGRESS
    message: str = ""
    requested_by: str = ""


class StagingMethods(CatalogPart):
    """Staging, applying and failing an endpoint's pending config."""

    if TYPE_CHECKING:  # what Catalog gives this group besides CatalogPart

        def _updated(
            self,
            current: Endpoint,
            description: str | None,
            replace: bool,
            served_entities: Sequence[ServedEntity | dict[str, Any]] | None,
            options: dict[str, Any],
        ) -> Endpoint: ...

    def stage(
        self,
        name: str,
        *,
        description: str | None = None,
        replace: bool = False,
        served_entities: Sequence[ServedEntity | dict[str, Any]] | None = None,
        **options: Any,
    ) -> Staged:
        """Check a config update as `update` would (needs CAN_MANAGE) and store it as pending, replacing a
        pending one; the endpoint keeps serving its current config until `apply_staged`."""
        current = self.authorize(name, "manage")
        updated = self._updated(current, description, replace, served_entities, options)
        at = self._store.set_pending(updated, IN_PROGRESS, "", self.principal.name)
        if at is None:
            raise UnknownEndpoint(name, self.names())
        self._note("endpoints.stage", current.name, options=updated.stored_options())
        return Staged(_next(current, updated), at, IN_PROGRESS, "", self.principal.name)

    def pending(self, name: str) -> Staged | None:
        """The endpoint's pending config (needs CAN_VIEW), if one is in progress or failed."""
        current = self.authorize(name, "view")
        row = self._store.pending(current.name)
        if row is None:
            return None
        staged = Endpoint.from_stored(
            current.name, row["kind"], row["options"], description=row["description"]
        )
        return Staged(
            _next(current, staged), row["requested_at"], row["state"], row["message"], row["requested_by"]
        )

    def staged_configs(self) -> list[Staged]:
        """Every pending config in progress, of the endpoints this principal may view: what each server process
        loads ahead of the switch."""
        found = []
        for row in self._store.pendings():
            try:
                current = self.authorize(row["name"], "view")
            except AifuncsError:  # deleted meanwhile, or not this principal's to see
                continue
            staged = Endpoint.from_stored(
                current.name, row["kind"], row["options"], description=row["description"]
            )
            found.append(
                Staged(_next(current, staged), row["requested_at"], row["state"], row["message"], row["requested_by"])
            )  # fmt: skip
        return found

    def served_endpoints(self) -> list[Endpoint]:
        """Every endpoint of the catalog whatever the principal may view: what a server's model workers may
        serve (the pools of the others are released). Never shown to a caller."""
        return self._store.list()

    def seen_serving(self, process: str) -> None:
        """Note this server process (with model workers) as running: the switch of a staged config waits for
        its load while it is seen."""
        self._store.seen_serving(process)

    def forget_serving(self, process: str) -> None:
        self._store.forget_serving(process)

    def serving_processes(self, within_s: float) -> list[str]:
        """The server processes of this home seen running in the last `within_s` seconds."""
        return self._store.serving(within_s)

    def report_load(self, staged: Staged, process: str, failure: str | None) -> None:
        """A server process has loaded the staged config's models (`failure` None), or could not (why)."""
        state, message = (READY, "") if failure is None else (FAILED, failure[:2000])
        self._store.report_load(staged.endpoint.name, staged.requested_at, process, state, message)

    def loads(self, staged: Staged) -> dict[str, tuple[str, str]]:
        """Each server process's report on the staged config: (READY or FAILED, why)."""
        return self._store.loads(staged.endpoint.name, staged.requested_at)

    def apply_staged(self, staged: Staged) -> Endpoint:
        """Apply a pending config as the endpoint's next version (needs CAN_MANAGE still); ConfigError when a
        newer config took its place meanwhile."""
        current = self.authorize(staged.endpoint.name, "manage")
        result = self._store.apply_pending(staged.endpoint, staged.requested_at)
        if result is None:
            raise ConfigError(
                f"The config update of {current.name!r} asked at {staged.requested_at} was replaced by a newer one."
            )
        self._note("endpoints.update", result.name, version=result.version, options=result.stored_options())
        return result

    def fail_staged(self, staged: Staged, message: str) -> None:
        """Mark a pending config UPDATE_FAILED with the reason; the endpoint keeps its current config."""
        self.authorize(staged.endpoint.name, "view")
        self._store.settle_pending(staged.endpoint.name, staged.requested_at, UPDATE_FAILED, message[:2000])
        self._note("endpoints.update_failed", staged.endpoint.name, message=message[:2000])


def _next(current: Endpoint, updated: Endpoint) -> Endpoint:
    """The updated config as the endpoint's next version (what the model workers load ahead)."""
    return dataclasses.replace(
        updated, version=current.version + 1, created_at=current.created_at, updated_at=current.updated_at
    )
