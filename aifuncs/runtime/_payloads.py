"""A model request as an inference-table row (governance/payloads.py writes them off the request path)."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pandas as pd
import pyarrow as pa

from aifuncs._home import home_file
from aifuncs.governance.guardrails import screen
from aifuncs.governance.payloads import PayloadRow, capped, day, now_ms, payload_log
from aifuncs.providers.base import Prediction
from aifuncs.runtime._call import CallSpec


def _as_list(outputs: Any) -> list[Any]:
    """A model's output, whatever its shape, as one JSON-able value per row."""
    if outputs is None:
        return []
    if isinstance(outputs, (pa.Array, pa.ChunkedArray)):
        return list(outputs.to_pylist())
    if isinstance(outputs, (pa.Table, pa.RecordBatch)):
        return list(outputs.to_pylist())
    if isinstance(outputs, pd.DataFrame):  # its rows (a Series has to_dict too, of another shape)
        return list(outputs.to_dict("records"))
    if hasattr(outputs, "tolist"):  # numpy, pandas Series
        return list(outputs.tolist())
    if isinstance(outputs, (str, bytes)):  # one value
        return [outputs]
    return list(outputs)


def _json(value: Any, limit: int, code: str, codes: list[str], size_hint: int = 0) -> str | None:
    if size_hint > 4 * limit:  # far over the cap as Arrow bytes already: not worth formatting
        codes.append(code)
        return None
    return capped(json.dumps(value, default=str, separators=(",", ":")), limit, code, codes)


def log_request(
    call: CallSpec,
    chunk: pa.Array,
    output: Any,
    error: BaseException | None,
    seconds: float | None,
    status_code: int,
) -> None:
    """Record one request of an endpoint with an inference table: what was sent and what came back (or the
    error), each capped; a refusal (`output` and `chunk` unused, status 403/429) as metadata only."""
    table = call.payloads
    if table is None or not table.enabled:
        return
    codes: list[str] = []
    request = response = None
    if status_code not in (400, 403, 429, 503):  # refusals: metadata only
        body = {"inputs": chunk.to_pylist() if len(chunk) else []}
        if call.parameters:
            body["params"] = call.parameters
        request = _json(body, table.max_payload_bytes, "MAX_REQUEST_SIZE_EXCEEDED", codes, chunk.nbytes)
        if error is None:
            outputs = _as_list(output.outputs if isinstance(output, Prediction) else output)
            rails = call.guardrails
            if (
                rails is not None
                and rails.output.active
                and all(isinstance(o, str) or o is None for o in outputs)
            ):
                outputs = screen(
                    rails.output, outputs
                ).texts  # logged as the caller gets them: masked, or withheld
            response = _json(
                {"predictions": outputs},
                table.max_payload_bytes,
                "MAX_RESPONSE_SIZE_EXCEEDED",
                codes,
            )
    if error is not None:
        response = json.dumps({"error_code": type(error).__name__, "message": str(error)[:2000]})
    used = output if isinstance(output, Prediction) else Prediction(None)
    stamp = now_ms()
    payload_log().record(
        home_file("payloads.db"),
        PayloadRow(
            request_id=uuid.uuid4().hex,
            client_request_id=call.context.client_request_id,
            date=day(stamp),
            timestamp_ms=stamp,
            status_code=status_code,
            execution_time_ms=None if seconds is None else round(seconds * 1000, 3),
            request=request,
            response=response,
            served_entity_id=call.endpoint.entity_name,
            logging_error_codes=json.dumps(codes) if codes else None,
            requester=None if call.principal is None else call.principal.name,
            endpoint=call.endpoint.name,
            origin=call.context.origin,
            input_tokens=used.input_tokens,
            output_tokens=used.output_tokens,
        ),
        table,
    )
