"""The session: one caller's world, made at a public edge and passed down.

A session holds what a query, a job or a request runs with: the runtime that calls the models, the
catalog as its principal sees it, the home and identity, the limits and meters it is counted against
(budgets, progress), the labels its usage rows carry and a job's checkpoint. Nothing below the public
edges reads a module global for these: two jobs and a query in three threads of one process each keep
their own.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aifuncs.catalog import Catalog, default_catalog
from aifuncs.governance import Identity, Principal, current, identify
from aifuncs.runtime import Budget, Meter, RequestContext, Runtime, default_runtime
from aifuncs.runtime._checkpoint import Checkpoint


@dataclass(frozen=True, eq=False)
class Session:
    """One caller's runtime, catalog, identity, meters, usage labels and checkpoint (see the module's text).

    Sessions are values: `derive` gives a session for one query or job on top of a connection's."""

    runtime: Runtime
    identity: Identity
    base_catalog: Catalog  # the home's catalog; `catalog` is the view of it the principal has
    budgets: tuple[Budget, ...] = ()  # the query's (or job's) and the process's, each counting every request
    progress: Meter | None = None  # told of every request and answered row
    context: RequestContext = RequestContext()  # origin, labels and client id of every usage row
    wait_for_limits: bool = True  # a rate-limited request waits its turn; False: RateLimited at once
    checkpoint: Checkpoint | None = None  # a scheduled job's: answers a rerun would pay for again

    @property
    def principal(self) -> Principal:
        return self.identity.principal  # read each time: a token's recheck may renew it

    @property
    def home(self) -> Path:
        return self.identity.home

    @property
    def catalog(self) -> Catalog:
        """The catalog as this session's principal sees it (authorization happens there)."""
        return self.base_catalog.acting_as(self.principal)

    @property
    def meters(self) -> tuple[Meter, ...]:
        """What every request of the session is counted against: its budgets, then its progress."""
        return (*self.budgets, self.progress) if self.progress is not None else self.budgets

    def derive(self, **changes: Any) -> Session:
        """This session with some of its fields changed (a query's budget, a job's checkpoint...)."""
        return dataclasses.replace(self, **changes)

    def __repr__(self) -> str:
        return f"Session(principal={self.principal.name!r}, home={str(self.home)!r}, origin={self.context.origin!r})"


def open_session(
    *, token: str | None = None, identity: Identity | None = None, runtime: Runtime | None = None
) -> Session:
    """A session for the principal of `identity` (else of `token`, else of AIFUNCS_TOKEN, else the OS account
    that owns AIFUNCS_HOME), on `runtime` (else the process's). A public edge: the one place the process's
    runtime and catalog are looked up for a session."""
    if identity is None:
        identity = identify(token) if token is not None else current()
    return Session(runtime or default_runtime(), identity, default_catalog())
