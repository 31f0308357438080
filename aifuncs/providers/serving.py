"""`serving` endpoints: MLflow scoring servers (`mlflow models serve`) and Databricks serving endpoints.

Many rows per request, in any of the formats `/invocations` accepts.
"""

from __future__ import annotations

from typing import Any, Literal

import pyarrow as pa
from pydantic import Field

from aifuncs.errors import RemoteError
from aifuncs.providers._http import HttpOptions, HttpProvider

Format = Literal["dataframe_split", "dataframe_records", "inputs", "instances"]


class ServingOptions(HttpOptions):
    url: str = Field(description="The full scoring URL, e.g. http://127.0.0.1:5001/invocations")
    format: Format | None = Field(
        default=None, description="Request format; default dataframe_split for STRUCT requests, else inputs."
    )


class ServingProvider(HttpProvider):
    kind = "serving"
    Options = ServingOptions
    options: ServingOptions
    default_batch_rows = 256

    def output_type(self) -> str | None:
        return self.options.returns

    async def predict(self, requests: pa.Array, options: Any) -> Any:
        payload = _payload(requests, self.options.format)
        if options.parameters:
            payload["params"] = options.parameters
        reply = await self.post_json(self.options.url, payload)
        predictions = reply.get("predictions") if isinstance(reply, dict) else reply
        if predictions is None:
            raise RemoteError(
                f"Endpoint {self.endpoint.name!r}: the reply has no predictions: {str(reply)[:200]}"
            )
        if isinstance(predictions, dict):  # {"column": [values...]} from a multi-output model
            names = list(predictions)
            predictions = [
                dict(zip(names, row, strict=True)) for row in zip(*predictions.values(), strict=True)
            ]
        return predictions


def _payload(requests: pa.Array, format: Format | None) -> dict[str, Any]:
    rows = requests.to_pylist()
    is_struct = pa.types.is_struct(requests.type)
    format = format or ("dataframe_split" if is_struct else "inputs")
    if format == "dataframe_split":
        if not is_struct:
            return {"dataframe_split": {"columns": ["input"], "data": [[r] for r in rows]}}
        columns = [f.name for f in requests.type]
        return {"dataframe_split": {"columns": columns, "data": [[r[c] for c in columns] for r in rows]}}
    if format == "dataframe_records":
        return {"dataframe_records": rows if is_struct else [{"input": r} for r in rows]}
    return {format: rows}
