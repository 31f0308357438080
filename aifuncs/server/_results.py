"""A statement's result as Databricks' Statement Execution API gives it: JSON_ARRAY rows in chunks.

Only what is answered is ever held: rows are read from DuckDB in batches until `row_limit` (one row more,
to know whether it truncated), the caller's `byte_limit` or the server's cap, never the whole result first.
A result over the server's cap fails with a message saying how to ask for less, as Databricks' INLINE
disposition does past its limit.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import duckdb
import pyarrow as pa

from aifuncs.errors import SqlError
from aifuncs.server._errors import ApiError

__all__ = ["Result", "collect"]

_CHUNK_BYTES = 1024 * 1024  # Arrow bytes per chunk, about
_CHUNK_CELLS = 200_000  # values per chunk at most: one chunk's JSON is built in memory when asked
_BATCH_ROWS = 8192
_TYPE_NAMES = {
    "BOOLEAN": "BOOLEAN", "TINYINT": "BYTE", "SMALLINT": "SHORT", "INTEGER": "INT", "BIGINT": "LONG",
    "HUGEINT": "DECIMAL", "FLOAT": "FLOAT", "DOUBLE": "DOUBLE", "VARCHAR": "STRING", "DATE": "DATE",
    "TIMESTAMP": "TIMESTAMP", "BLOB": "BINARY",
}  # fmt: skip


def _type_name(ddl: str) -> str:
    upper = ddl.upper()
    for prefix, name in (
        ("DECIMAL", "DECIMAL"),
        ("STRUCT", "STRUCT"),
        ("MAP", "MAP"),
        ("TIMESTAMP", "TIMESTAMP"),
    ):
        if upper.startswith(prefix):
            return name
    if upper.endswith("]"):
        return "ARRAY"
    return _TYPE_NAMES.get(upper, "STRING")


def _text(value: Any) -> str | None:
    """Databricks' JSON_ARRAY holds every value as text (NULL as null)."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (dict, list)):
        return json.dumps(value, default=str)
    return str(value)


@dataclass(frozen=True)
class Result:
    table: pa.Table
    types: tuple[str, ...]  # DuckDB's type of each column, as SQL users know them
    truncated: bool
    chunk_rows: int  # rows per chunk (the last one may hold fewer)

    @property
    def nbytes(self) -> int:
        return self.table.nbytes

    @property
    def chunk_count(self) -> int:
        return max(1, -(-self.table.num_rows // self.chunk_rows))

    def manifest(self) -> dict[str, Any]:
        columns = [
            {"name": name, "type_name": _type_name(ddl), "type_text": ddl, "position": i}
            for i, (name, ddl) in enumerate(zip(self.table.column_names, self.types, strict=True))
        ]
        rows = self.table.num_rows
        return {
            "format": "JSON_ARRAY",
            "schema": {"column_count": len(columns), "columns": columns},
            "total_row_count": rows,
            "total_byte_count": self.nbytes,
            "total_chunk_count": self.chunk_count,
            "chunks": [self._place(i) for i in range(self.chunk_count)],
            "truncated": self.truncated,
        }

    def _place(self, index: int) -> dict[str, Any]:
        offset = index * self.chunk_rows
        return {
            "chunk_index": index,
            "row_offset": offset,
            "row_count": max(0, min(self.chunk_rows, self.table.num_rows - offset)),
        }

    def chunk(self, statement_id: str, index: int) -> dict[str, Any]:
        if not 0 <= index < self.chunk_count:
            raise ApiError(
                404,
                "RESOURCE_DOES_NOT_EXIST",
                f"Statement {statement_id} has chunks 0 to {self.chunk_count - 1}; there is no chunk {index}.",
            )
        place = self._place(index)
        rows = self.table.slice(place["row_offset"], place["row_count"]).to_pylist()
        answer = {**place, "data_array": [[_text(v) for v in row.values()] for row in rows]}
        if index + 1 < self.chunk_count:
            answer["next_chunk_index"] = index + 1
            answer["next_chunk_internal_link"] = (
                f"/api/2.0/sql/statements/{statement_id}/result/chunks/{index + 1}"
            )
        return answer


def collect(
    relation: duckdb.DuckDBPyRelation | None, row_limit: int | None, byte_limit: int | None, cap: int
) -> Result:
    """Read at most `row_limit` rows and `byte_limit` bytes (truncated: true beyond either); beyond `cap`
    bytes, with no byte_limit of the caller's below it, the statement fails."""
    if relation is None:  # DDL: no rows
        return Result(pa.table({}), (), False, 1)
    names, types = relation.columns, tuple(str(t) for t in relation.types)
    bytes_allowed = min(byte_limit, cap) if byte_limit is not None else cap
    rows_wanted = row_limit if row_limit is not None else None
    reader = relation.to_arrow_reader(
        _BATCH_ROWS if row_limit is None else max(1, min(row_limit + 1, _BATCH_ROWS))
    )
    batches: list[pa.RecordBatch] = []
    rows = size = 0
    truncated = False
    try:
        for batch in reader:
            if rows_wanted is not None and rows + batch.num_rows > rows_wanted:
                batch, truncated = batch.slice(0, rows_wanted - rows), True
            if size + batch.nbytes > bytes_allowed:
                if byte_limit is None or byte_limit > cap:
                    raise SqlError(
                        f"The result is over {cap // (1024 * 1024)} MB, the most this server answers: give a"
                        " row_limit or a byte_limit, or select fewer rows or columns."
                    )
                batch, truncated = _within(batch, bytes_allowed - size), True
            batches.append(batch)
            rows, size = rows + batch.num_rows, size + batch.nbytes
            if truncated:
                break
    finally:
        reader.close()
    table = pa.Table.from_batches(batches, reader.schema) if batches else reader.schema.empty_table()
    table = table.rename_columns(names) if table.num_columns == len(names) else table
    width = max(1, table.num_columns)
    per_row = max(1, table.nbytes // max(1, table.num_rows))
    chunk_rows = max(1, min(_CHUNK_BYTES // per_row, _CHUNK_CELLS // width))
    return Result(table, types, truncated, chunk_rows)


def _within(batch: pa.RecordBatch, room: int) -> pa.RecordBatch:
    """The first rows of `batch` that fit in `room` bytes."""
    low, high = 0, batch.num_rows
    while low < high:
        middle = (low + high + 1) // 2
        if batch.slice(0, middle).nbytes <= room:
            low = middle
        else:
            high = middle - 1
    return batch.slice(0, low)
