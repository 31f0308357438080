"""Requests and answers as canonical JSON text: the identity of a request (de-duplication, cache keys) and
the stored form of an answer.

DuckDB writes and reads the JSON both ways (`to_json`, and a cast from JSON to the call's type), so any
DuckDB type - structs, lists, timestamps, decimals - round-trips exactly, in C++, with no per-row Python.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from aifuncs._fork import ProcessLocal
from aifuncs._types import to_arrow

_local = ProcessLocal()


def _con() -> duckdb.DuckDBPyConnection:
    # One connection per thread: the loop thread and DuckDB's threads may all convert at once.
    con: duckdb.DuckDBPyConnection | None = getattr(_local.values, "con", None)
    if con is None:
        con = _local.values.con = duckdb.connect(config={"threads": 1})
    return con


def to_json_texts(values: pa.Array) -> pa.Array:
    """Each value as DuckDB's canonical JSON text, wrapped as {"v": value} so NULLs and strings survive."""
    table = pa.table({"v": values})
    result = _con().from_arrow(table).project("""to_json({'v': v})::VARCHAR AS j""").to_arrow_table()
    return result.column("j").combine_chunks().cast(pa.string())


def from_json_texts(texts: list[str], ddl: str, target: pa.DataType) -> pa.Array:
    """The inverse of `to_json_texts`, into the call's result type."""
    if not texts:
        return pa.array([], target)
    table = pa.table({"j": pa.array(texts, pa.string())})
    result = _con().from_arrow(table).project(f"CAST(j::JSON AS STRUCT(v {ddl})).v AS v").to_arrow_table()
    return to_arrow(result.column("v").combine_chunks(), target)


@dataclass(frozen=True)
class Distinct:
    """The distinct requests of a batch, and for each row the index of its distinct request."""

    values: pa.Array
    texts: list[str]  # canonical JSON of each distinct request
    rows: np.ndarray  # int, one per row of the batch
    all_distinct: bool

    def expand(self, answers: pa.Array) -> pa.Array:
        """Answers for the distinct requests -> one answer per row of the batch."""
        return answers if self.all_distinct else answers.take(pa.array(self.rows))

    def expand_list(self, items: list[Any]) -> list[Any]:
        if self.all_distinct or not any(item is not None for item in items):
            return items if self.all_distinct else [None] * len(self.rows)
        return [items[i] for i in self.rows]


def distinct(requests: pa.Array) -> Distinct:
    encoded = pc.dictionary_encode(to_json_texts(requests))
    rows = encoded.indices.to_numpy(zero_copy_only=False)
    texts = encoded.dictionary.to_pylist()
    if len(texts) == len(requests):
        return Distinct(requests, texts, rows, all_distinct=True)
    _, first = np.unique(rows, return_index=True)  # dictionary order is order of first appearance
    return Distinct(requests.take(pa.array(first)), texts, rows, all_distinct=False)


def every_row(requests: pa.Array) -> Distinct:
    """Each row its own request, equal ones included (a sampling model answers each anew)."""
    texts = to_json_texts(requests).to_pylist()
    return Distinct(requests, texts, np.arange(len(requests)), all_distinct=True)


def call_identity(*parts: Any) -> bytes:
    return json.dumps(parts, sort_keys=True, default=str, separators=(",", ":")).encode()


def answer_keys(identity: bytes, texts: list[str]) -> list[bytes]:
    """One key per request: what is asked (endpoint, version, function, types, parameters) and of what."""
    prefix = hashlib.sha256(identity).digest()
    return [hashlib.sha256(prefix + text.encode()).digest() for text in texts]
