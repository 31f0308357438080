"""Type strings and Arrow types: Databricks/DuckDB DDL, MLflow signatures, model outputs.

DuckDB is the authority on its own types: a DDL string is checked, and its Arrow type found, by asking
an in-memory DuckDB connection, so the Arrow arrays we return are exactly what DuckDB expects back.
"""

from __future__ import annotations

import functools
import json
import re
import threading
from typing import Any

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pa_json
import sqlglot
from sqlglot import exp

from aifuncs._fork import after_fork_in_child, leave_behind
from aifuncs.errors import ArgumentError, ResultTypeError

_probe_lock = threading.Lock()
_probe_con: duckdb.DuckDBPyConnection | None = None


def _probe() -> duckdb.DuckDBPyConnection:
    global _probe_con
    if _probe_con is None:
        _probe_con = duckdb.connect()
    return _probe_con


def _forget_probe() -> None:
    global _probe_con, _probe_lock
    leave_behind(_probe_con)
    _probe_con, _probe_lock = None, threading.Lock()


after_fork_in_child(_forget_probe)


@functools.lru_cache(maxsize=512)
def to_duckdb_type(type_string: str, dialect: str = "databricks") -> str:
    """Normalise a type string (`STRUCT<a: STRING>`, `ARRAY<INT>`, `DOUBLE`...) to DuckDB DDL."""
    unbalanced = _unbalanced(type_string)
    if unbalanced:  # sqlglot reads `STRUCT<a INT` as if it were closed: refuse before any model is called
        raise ArgumentError(f"Cannot read the type {type_string!r}: {unbalanced}.")
    try:
        ddl = exp.DataType.build(type_string, dialect=dialect).sql("duckdb")
    except (sqlglot.errors.ParseError, ValueError) as error:
        raise ArgumentError(f"Cannot read the type {type_string!r}: {error}") from None
    if ("<" in type_string or "(" in type_string) and not any(c in ddl for c in "([<"):
        # sqlglot drops what it cannot read inside a nested type; refuse rather than guess.
        raise ArgumentError(f"Cannot read the type {type_string!r}: check its field types.")
    arrow_type(ddl)  # validates against DuckDB itself
    return ddl


_CLOSING = {"<": ">", "(": ")", "[": "]"}


def _unbalanced(type_string: str) -> str | None:
    """What is wrong with the brackets of a type string (outside quoted names), or None."""
    open_: list[str] = []
    quote: str | None = None
    for char in type_string:
        if quote is not None:
            quote = None if char == quote else quote
        elif char in '`"':
            quote = char
        elif char in _CLOSING:
            open_.append(char)
        elif char in _CLOSING.values():
            if not open_ or _CLOSING[open_[-1]] != char:
                return f"{char!r} closes nothing that is open"
            open_.pop()
    if quote is not None:
        return f"the quoted name opened with {quote} is not closed"
    if open_:
        return f"{open_[-1]!r} is not closed (add {''.join(_CLOSING[c] for c in reversed(open_))!r})"
    return None


@functools.lru_cache(maxsize=512)
def arrow_type(ddl: str) -> pa.DataType:
    """The Arrow type DuckDB uses for a DuckDB type."""
    with _probe_lock:
        try:
            schema = _probe().sql(f"SELECT CAST(NULL AS {ddl}) AS v LIMIT 0").to_arrow_table().schema
        except duckdb.Error as error:
            raise ArgumentError(f"{ddl!r} is not a DuckDB type: {str(error).splitlines()[0]}") from None
    return plain_type(schema.field("v").type)


def duckdb_ddl(t: pa.DataType) -> str:
    """The DuckDB type DuckDB reads an Arrow type as (how engines other than DuckDB describe a column)."""
    with _probe_lock:
        relation = _probe().from_arrow(pa.table({"v": pa.array([], t)}))
        return str(relation.types[0])


def plain_type(t: pa.DataType) -> pa.DataType:
    """DuckDB may export VARCHAR as string_view; plain strings are what pandas and models produce."""
    if pa.types.is_string_view(t) or pa.types.is_large_string(t):
        return pa.string()
    if pa.types.is_struct(t):
        return pa.struct([pa.field(f.name, plain_type(f.type), f.nullable) for f in t])
    if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_list_view(t):
        return pa.list_(plain_type(t.value_type))
    return t


def error_struct_type(ddl: str) -> str:
    """The result type of a call with failOnError => false (Databricks' shape)."""
    return f'STRUCT("result" {ddl}, "errorMessage" VARCHAR)'


# MLflow's column types, by the name `DataType.name` gives them.
_MLFLOW_TO_DUCKDB = {
    "boolean": "BOOLEAN",
    "integer": "INTEGER",
    "long": "BIGINT",
    "float": "FLOAT",
    "double": "DOUBLE",
    "string": "VARCHAR",
    "binary": "BLOB",
    "datetime": "TIMESTAMP",
}

_NUMPY_TO_DUCKDB = {
    "bool": "BOOLEAN",
    "int8": "TINYINT",
    "int16": "SMALLINT",
    "int32": "INTEGER",
    "int64": "BIGINT",
    "uint8": "UTINYINT",
    "uint16": "USMALLINT",
    "uint32": "UINTEGER",
    "uint64": "UBIGINT",
    "float32": "FLOAT",
    "float64": "DOUBLE",
    "str": "VARCHAR",
    "object": "VARCHAR",
}


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def mlflow_spec_type(spec: Any) -> str:
    """DuckDB type of one MLflow ColSpec or TensorSpec."""
    if hasattr(spec, "shape"):  # TensorSpec: a per-row tensor of shape[1:]
        base = _NUMPY_TO_DUCKDB.get(np.dtype(spec.type).name, "VARCHAR")
        extra_dims = len(spec.shape) - 1 if spec.shape else 0
        return base + "[]" * max(extra_dims, 0)
    type_name = getattr(spec.type, "name", str(spec.type))
    return _MLFLOW_TO_DUCKDB.get(type_name, "VARCHAR")


def mlflow_schema_type(schema: Any) -> str | None:
    """DuckDB type of an MLflow output schema: a scalar for one column, a STRUCT for several."""
    if schema is None:
        return None
    specs = list(schema.inputs)
    if not specs:
        return None
    if len(specs) == 1:
        return mlflow_spec_type(specs[0])
    fields = ", ".join(
        f"{quote_ident(s.name or f'col{i}')} {mlflow_spec_type(s)}" for i, s in enumerate(specs)
    )
    return f"STRUCT({fields})"


def to_arrow(output: Any, target: pa.DataType) -> pa.Array:
    """Convert a model's output (Arrow, pandas, numpy, list) to an Arrow array of `target`."""
    array = _as_arrow(output, target)
    if array.type == target:
        return array
    try:
        return _cast(array, target)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as error:
        raise ResultTypeError(
            f"The model returned {array.type}, which cannot be converted to {target}: {error}."
            " Set returnType to a type that matches the model's output."
        ) from None


def _as_arrow(output: Any, target: pa.DataType) -> pa.Array:
    if isinstance(output, pa.ChunkedArray):
        return output.combine_chunks()
    if isinstance(output, pa.Array):
        return output
    if isinstance(output, pa.Table):
        return (
            output.to_struct_array().combine_chunks()
            if output.num_columns > 1
            else output.column(0).combine_chunks()
        )
    if isinstance(output, pd.DataFrame):
        if output.shape[1] == 1 and not pa.types.is_struct(target):
            return _as_arrow(output.iloc[:, 0], target)
        table = pa.Table.from_pandas(output, preserve_index=False)
        return table.to_struct_array().combine_chunks()
    if isinstance(output, pd.Series):
        return pa.Array.from_pandas(output)
    if isinstance(output, np.ndarray):
        if output.ndim == 1:
            return pa.array(output)
        if output.ndim == 2 and output.shape[1] == 1 and not pa.types.is_list(target):
            return pa.array(output[:, 0])
        return pa.array(list(output))
    if isinstance(output, (list, tuple)):
        return pa.array(list(output))
    raise ResultTypeError(
        f"The model returned a {type(output).__name__}; expected an array, Series or DataFrame."
    )


def _cast(array: pa.Array, target: pa.DataType) -> pa.Array:
    if pa.types.is_string(target) and (pa.types.is_nested(array.type)):
        # Nested values become JSON text, as Databricks renders them in a STRING result.
        return pa.array(
            [None if v is None else json.dumps(v, default=str) for v in array.to_pylist()], pa.string()
        )
    if pa.types.is_string(target) and pa.types.is_floating(array.type):
        # Arrow writes 2.0 as "2"; DuckDB and Python write "2.0". Keep the SQL rendering.
        return pa.array([None if v is None else repr(v) for v in array.to_pylist()], pa.string())
    if pa.types.is_struct(target) and pa.types.is_struct(array.type):
        names = [f.name for f in target]
        given = {f.name for f in array.type}
        missing = [n for n in names if n not in given]
        if missing:
            raise ResultTypeError(
                f"The model's output has fields {sorted(given)}; the result type needs {names}"
                f" (missing {missing}). Set returnType to match the model's output."
            )
        children = [_cast(pc.struct_field(array, n), f.type) for n, f in zip(names, target, strict=True)]
        return pa.StructArray.from_arrays(children, fields=list(target), mask=array.is_null())
    return array.cast(target)


_FENCE = re.compile(r"^\s*```[a-zA-Z]*\s*(.*?)\s*```\s*$", re.DOTALL)


def parse_replies(texts: pa.Array, target: pa.DataType) -> tuple[pa.Array, list[str | None]]:
    """Model-written text answers parsed as JSON into `target`; a reply that does not fit is a per-row error."""
    values: list[Any] = []
    errors: list[str | None] = []
    for text in texts.to_pylist():
        if text is None:
            values.append(None)
            errors.append(None)
            continue
        try:
            value = _parse_one(text, target)
        except (ValueError, TypeError, pa.ArrowException) as error:
            shown = text if len(text) <= 80 else text[:77] + "..."
            values.append(None)
            errors.append(f"The reply does not parse as {target}: {shown!r} ({error})")
            continue
        values.append(value)
        errors.append(None)
    return pa.array(values, target), errors


def _parse_one(text: str, target: pa.DataType) -> Any:
    fenced = _FENCE.match(text)
    body = fenced.group(1) if fenced else text.strip()
    value = json.loads(body)
    if pa.types.is_struct(target) and not isinstance(value, dict):
        raise ValueError("expected a JSON object")
    pa.array([value], target)  # raises when the value does not fit the type
    return value


def json_schema(ddl: str) -> dict[str, Any]:
    """A JSON schema for a DuckDB type: what constrained decoding needs to produce it."""
    return _schema_of(arrow_type(ddl))


def _schema_of(t: pa.DataType) -> dict[str, Any]:
    if pa.types.is_struct(t):
        return {
            "type": "object",
            "properties": {f.name: _schema_of(f.type) for f in t},
            "required": [f.name for f in t],
            "additionalProperties": False,
        }
    if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
        return {"type": "array", "items": _schema_of(t.value_type)}
    if pa.types.is_boolean(t):
        return {"type": "boolean"}
    if pa.types.is_integer(t):
        return {"type": "integer"}
    if pa.types.is_floating(t) or pa.types.is_decimal(t):
        return {"type": "number"}
    return {"type": "string"}


def decode_json(texts: pa.Array) -> pa.Array:
    """JSON texts (DuckDB's to_json) to an Arrow array, parsed in C++ by pyarrow: no per-row Python."""
    texts = texts.cast(pa.string())
    lines = pc.binary_join_element_wise('{"r":', pc.fill_null(texts, "null"), "}\n", "")
    _, offsets, data = lines.buffers()
    bounds = np.frombuffer(offsets, dtype=np.int32)
    data = data[bounds[lines.offset] : bounds[lines.offset + len(lines)]]
    table = pa_json.read_json(pa.BufferReader(data), read_options=pa_json.ReadOptions(use_threads=False))
    return table.column("r").combine_chunks()
