"""What every request leaves behind: its journal entry before each send, its usage row and inference-log row
after, whatever its fate; a batch's guardrail decisions as one usage row."""

from __future__ import annotations

import json
import time
import uuid
from collections import Counter
from typing import Any

import pyarrow as pa

from aifuncs.errors import AifuncsError
from aifuncs.providers import Provider
from aifuncs.providers.base import Prediction
from aifuncs.runtime._call import CallSpec
from aifuncs.runtime._payloads import log_request
from aifuncs.runtime._rate import text_chars
from aifuncs.runtime._usage import UsageLog, UsageRow
from aifuncs.runtime._usage import now as usage_now

_MAX_MESSAGE = 1000


def describe(error: BaseException) -> str:
    text = str(error) if isinstance(error, AifuncsError) else f"{type(error).__name__}: {error}"
    return text if len(text) <= _MAX_MESSAGE else text[: _MAX_MESSAGE - 3] + "..."


class Sends:
    """A request's sends (first, retries, hedged resends, a coalesced batch sent again): each counted and
    journaled as it goes, under the request's one id."""

    def __init__(self, usage: UsageLog, call: CallSpec, chunk: pa.Array) -> None:
        self.id = uuid.uuid4().hex
        self.count = 0
        self._usage, self._call, self._chunk = usage, call, chunk

    def sent(self) -> None:
        self.count += 1
        self._usage.sending(
            usage_row(
                self._call,
                rows=len(self._chunk),
                input_tokens=None,
                output_tokens=None,
                latency_ms=0.0,
                status="interrupted",
                attempts=self.count,
                error=None,
                request_id=self.id,
            )
        )


def record_request(
    usage: UsageLog,
    call: CallSpec,
    provider: Provider,
    chunk: pa.Array,
    started: float,
    attempts: int,
    output: Any,
    error: BaseException | None,
    request_id: str | None = None,
) -> None:
    """One request's usage row and inference-log row, answered or failed."""
    tokens = output if isinstance(output, Prediction) else Prediction(None)
    status_code = 200 if error is None else getattr(error, "status", None) or 500
    log_request(call, chunk, output, error, time.perf_counter() - started, status_code)
    usage.record(
        usage_row(
            call,
            rows=len(chunk),
            input_tokens=tokens.input_tokens,
            output_tokens=tokens.output_tokens,
            latency_ms=round((time.perf_counter() - started) * 1000, 3),
            status="ok" if error is None else "error",
            attempts=attempts,
            error=None if error is None else describe(error),
            request_id=request_id or uuid.uuid4().hex,
            status_code=status_code,
            input_chars=text_chars(chunk),
            output_chars=None
            if output is None
            else text_chars(tokens.outputs if isinstance(output, Prediction) else output),
        )
    )


def record_guardrail(usage: UsageLog, call: CallSpec, decisions: Counter[str]) -> None:
    """A batch's guardrail decisions as one usage row: how many rows, and each reason's count."""
    usage.record(
        usage_row(
            call,
            rows=sum(decisions.values()),
            input_tokens=None,
            output_tokens=None,
            latency_ms=0.0,
            status="guardrail",
            attempts=0,
            error="; ".join(f"{reason}: {count}" for reason, count in sorted(decisions.items())),
        )
    )


def usage_row(call: CallSpec, **fields: Any) -> UsageRow:
    """A usage row with what every row of a call carries: endpoint, function, who asked, from where."""
    context = call.context
    return UsageRow(
        ts=usage_now(),
        endpoint=call.endpoint.name,
        endpoint_version=call.endpoint.version,
        kind=call.endpoint.kind,
        function=call.function,
        requester=None if call.principal is None else call.principal.name,
        origin=context.origin,
        client_request_id=context.client_request_id,
        usage_context=json.dumps(dict(context.usage_context)) if context.usage_context else None,
        served_entity=call.endpoint.entity_name,
        **fields,
    )
