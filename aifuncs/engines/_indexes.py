"""Where a database keeps its vector indexes: the layout `aifuncs.index` writes and the planner reads.

An index is a DuckDB table in the same database (`__aifuncs_index_<name>`: the source rows and their
embeddings), listed in `__aifuncs_indexes` with the embedding endpoint that made it.
"""

from __future__ import annotations

import duckdb

from aifuncs._types import quote_ident
from aifuncs.planner import VectorIndex

REGISTRY = "__aifuncs_indexes"
EMBEDDING = "__embedding"
REGISTRY_DDL = (
    f"CREATE TABLE IF NOT EXISTS {REGISTRY} (name VARCHAR PRIMARY KEY, source VARCHAR, column_name VARCHAR,"
    " endpoint VARCHAR, rows BIGINT, created_at TIMESTAMP DEFAULT current_timestamp)"
)


def table_of(name: str) -> str:
    return quote_ident(f"__aifuncs_index_{name.lower()}")


def find(con: duckdb.DuckDBPyConnection, name: str) -> VectorIndex | None:
    """The index `name` of this database, or None when there is none."""
    try:
        rows = con.execute(f"SELECT endpoint FROM {REGISTRY} WHERE name = ?", [name]).fetchall()
    except duckdb.CatalogException:
        return None  # no index was ever made here
    if not rows or not isinstance(rows[0][0], str):
        return None
    return VectorIndex(table=table_of(name), embedding_column=EMBEDDING, endpoint=rows[0][0])
