"""What the planner hands the runtime for one AI call site."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from aifuncs._types import error_struct_type
from aifuncs.catalog import Endpoint
from aifuncs.governance import Principal
from aifuncs.governance.guardrails import Guardrails
from aifuncs.governance.limits import Check
from aifuncs.governance.payloads import InferenceTable

if TYPE_CHECKING:
    from aifuncs.functions.tasks import Task
    from aifuncs.runtime._checkpoint import Checkpoint
    from aifuncs.runtime._meter import Meter


Scored = tuple[pa.Array, list[str | None]]  # answers of a batch, and each row's error message (None: fine)


class EntityFailure(str):
    """A row's error message that says the served entity failed, not the request (429, 5xx, a timeout,
    unreachable, after the retries): another entity may answer it (`fallback_config`). A `str`, so it goes
    wherever an error message goes; `status` is the upstream's HTTP status, where it sent one."""

    status: int | None = None


@dataclass(frozen=True)
class RequestContext:
    """Where a call's requests come from, as the usage log records them."""

    origin: str = "sql"  # sql | pandas | job | rest
    client_request_id: str | None = None  # the caller's own id for its request
    usage_context: tuple[tuple[str, str], ...] = ()  # the caller's labels, e.g. (("team", "growth"),)


class Failure(Enum):
    """What a row the model fails to answer does to its query: one policy per call site."""

    RAISE = "raise"  # the query stops with the error (failOnError => true, the default)
    RECORD = "record"  # the row's (result, errorMessage) struct carries it (failOnError => false)
    NULL = "null"  # the row is NULL and the query goes on, with one warning (task functions)


@dataclass(frozen=True)
class CallSpec:
    """One call site of an AI function, with its options resolved and bound."""

    function: str
    endpoint: Endpoint
    result_type: str  # DuckDB DDL of the value the model's answer becomes
    failure: Failure = Failure.RAISE
    model_parameters: tuple[tuple[str, Any], ...] = ()
    response_format: str | None = None
    bulk_rows: int | None = None  # rows per model call when the planner scores a whole column at once
    cache: bool | None = None  # the call's `cache` argument: None lets the endpoint decide
    meters: tuple[Meter, ...] = ()  # the query's and the session's budgets, progress: told of every request
    task: Task | None = None  # a task function's prompt and parser (None for ai_query)
    principal: Principal | None = None  # who asks: authorized at plan time, counted in usage and limits
    rate_checks: tuple[Check, ...] = ()  # the endpoint's rate limits that hold for this principal
    # Limits checked, not taken, before this request: a topic check's embedding waits on (or is refused by)
    # the guarded endpoint's limits, so a request they will refuse costs no embedding first.
    precheck: tuple[Check, ...] = ()
    wait_for_limits: bool = True  # a rate-limited request waits its turn; False: RateLimited at once
    context: RequestContext = RequestContext()
    payloads: InferenceTable | None = None  # the endpoint's inference table, when it logs payloads
    guardrails: Guardrails | None = None  # the endpoint's input and output guardrails, when it has some
    topic_call: CallSpec | None = None  # embeds rows and topics for a valid_topics guardrail
    # Processes answering this call site at once (a Spark job's Python workers): each holds an equal share
    # of the endpoint's in-flight limit, so the job as a whole keeps to it.
    processes: int = 1
    # The session's job checkpoint, if any: answers a rerun of that job would pay for again are kept there
    # (each job its own; a query beside it keeps none there).
    checkpoint: Checkpoint | None = None
    # The endpoint's fallback_config: a row that fails on its served entity (after retries: 429, 5xx, a
    # timeout, unreachable) is asked of the other entities in list order, then of `fallback_call`'s endpoint
    # (bound for the same principal, under that endpoint's own limits and guardrails).
    fallback: bool = False
    fallback_call: CallSpec | None = None
    # At most this many retries of a failed request (the provider's own count when lower): 0 where a fallback
    # waits to answer it, which Databricks asks at once rather than after the entity's retries.
    max_retries: int | None = None

    def retries(self, provider_retries: int) -> int:
        return provider_retries if self.max_retries is None else min(provider_retries, self.max_retries)

    @property
    def fail_on_error(self) -> bool:
        """A failed row stops the query."""
        return self.failure is Failure.RAISE

    @property
    def null_on_error(self) -> bool:
        """A failed row becomes NULL (task functions) instead of stopping the query."""
        return self.failure is Failure.NULL

    @property
    def output_type(self) -> str:
        """The SQL type of the call: the value, or Databricks' (result, errorMessage) struct."""
        if self.failure is Failure.RECORD:
            return error_struct_type(self.result_type)
        return self.result_type

    def key(self) -> str:
        """What this call is bound to, as one text: every field (guardrails, inference table, limits, the
        principal included; budgets, progress and a job's checkpoint by the object, being bound into the
        call). The one identity every cache of bound calls and every function registered for one is named by:
        a field added here is part of it without another list to keep."""
        fields: list[Any] = []
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if field.name == "task":
                value = value.identity() if value is not None else None
            elif field.name == "meters":
                value = [id(m) for m in value]
            elif field.name == "checkpoint":
                value = None if value is None else id(value)
            elif field.name in ("topic_call", "fallback_call"):
                value = None if value is None else value.key()
            elif isinstance(value, Enum):
                value = value.value
            fields.append((field.name, value))
        return json.dumps(fields, default=repr)

    @property
    def parameters(self) -> dict[str, Any] | None:
        return dict(self.model_parameters) or None
