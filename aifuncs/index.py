"""Vector indexes: a table column embedded once, searched from SQL with vector_search(...).

    aifuncs.index.create(con, "docs_idx", table="docs", column="body")
    aifuncs.sql(con, "SELECT * FROM vector_search(index => 'docs_idx', query => 'refund policy', num_results => 5)")

Building an index goes through ai_embed, so unchanged texts cost nothing when it is rebuilt (the answer
cache); where it is kept is `aifuncs/engines/_indexes.py`.
"""

from __future__ import annotations

import builtins
from typing import Any

import duckdb

from aifuncs._types import quote_ident
from aifuncs.catalog import default_catalog
from aifuncs.engines._indexes import EMBEDDING, REGISTRY, table_of
from aifuncs.engines._indexes import REGISTRY_DDL as _REGISTRY_DDL
from aifuncs.engines.duckdb import sql
from aifuncs.errors import ConfigError

__all__ = ["REGISTRY", "create", "drop", "list", "table_of"]


def create(
    con: duckdb.DuckDBPyConnection,
    name: str,
    *,
    table: str,
    column: str,
    endpoint: str | None = None,
    replace: bool = False,
) -> int:
    """Embed `column` of every row of `table` into the index `name`; returns the rows indexed."""
    if not name.replace("_", "").isalnum():
        raise ConfigError(f"Invalid index name {name!r}: use letters, digits and '_'.")
    embedder = (
        default_catalog().get(endpoint).name if endpoint else default_catalog().default("embedding").name
    )
    con.execute(_REGISTRY_DDL)
    exists = con.execute(f"SELECT 1 FROM {REGISTRY} WHERE name = ?", [name]).fetchall()
    if exists and not replace:
        raise ConfigError(f"The vector index {name!r} exists; pass replace=True (--replace) to rebuild it.")
    source = con.sql(f"SELECT * FROM {table} LIMIT 0")  # checks the table and column, with DuckDB's message
    if column not in source.columns:
        raise ConfigError(
            f"Table {table!r} has no column {column!r}; its columns: {', '.join(source.columns)}."
        )
    sql(
        con,
        f"CREATE OR REPLACE TABLE {table_of(name)} AS SELECT *, ai_embed({quote_ident(column)},"
        f" endpoint => '{embedder}') AS {EMBEDDING} FROM {table}",
    )
    (rows,) = con.execute(f"SELECT count(*) FROM {table_of(name)}").fetchall()[0]
    con.execute(f"INSERT OR REPLACE INTO {REGISTRY} (name, source, column_name, endpoint, rows) VALUES (?, ?, ?, ?, ?)",
                [name, table, column, embedder, rows])  # fmt: skip
    return int(rows)


def drop(con: duckdb.DuckDBPyConnection, name: str) -> None:
    con.execute(_REGISTRY_DDL)
    con.execute(f"DROP TABLE IF EXISTS {table_of(name)}")
    con.execute(f"DELETE FROM {REGISTRY} WHERE name = ?", [name])


def list(con: duckdb.DuckDBPyConnection) -> builtins.list[dict[str, Any]]:  # noqa: A001 - mirrors the CLI verb
    con.execute(_REGISTRY_DDL)
    relation = con.sql(f"SELECT * FROM {REGISTRY} ORDER BY name")
    return [dict(zip(relation.columns, row, strict=True)) for row in relation.fetchall()]
