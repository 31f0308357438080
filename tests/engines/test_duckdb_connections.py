"""Two small promises of the DuckDB binding: every connection to a file gets the `ai_query` macro, and a
malformed `returnType` is refused when the query is planned, before any model is asked."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import duckdb
import pytest
from servers import FakeServer

import aifuncs
from aifuncs.errors import ArgumentError


@pytest.fixture
def llm(home: Path) -> Iterator[FakeServer]:
    with FakeServer() as server:
        aifuncs.endpoints.create("llm", kind="openai", model="m", base_url=server.url + "/v1")
        yield server


def test_a_second_connection_to_a_file_has_the_ai_query_macro(llm: FakeServer, tmp_path: Path) -> None:
    path = tmp_path / "shop.duckdb"
    first = aifuncs.connect(path)
    second = aifuncs.connect(path)  # the same database instance: its functions are shared, its macros not
    try:
        for con in (first, second):
            assert con.execute("SELECT ai_query('llm', 'hi')").fetchall() == [("echo: hi",)]
            assert con.execute("SELECT count(*) FROM aifuncs_endpoints").fetchall() == [(1,)]
    finally:
        second.close()
        first.close()


@pytest.mark.parametrize(
    "written", ["STRUCT<a INT", "ARRAY<STRUCT<a: INT>", "STRUCT<a: INT>>", "DECIMAL(10, 2"]
)
def test_a_malformed_return_type_is_refused_before_the_model_is_called(
    llm: FakeServer, con: duckdb.DuckDBPyConnection, written: str
) -> None:
    query = f"SELECT ai_query('llm', 'hi', returnType => '{written}')"
    with pytest.raises(ArgumentError, match=r"Cannot read the type .*(is not closed|closes nothing)"):
        aifuncs.sql(con, query, dialect="databricks")
    with pytest.raises(duckdb.Error, match=r"Cannot read the type"):  # the plain macro, too
        con.execute(query.replace("=>", ":=")).fetchall()
    assert llm.stats.requests == 0
    typed = aifuncs.sql(con, "SELECT ai_query('llm', 'hi', returnType => 'STRUCT<echo: STRING>') AS r",
                        dialect="databricks")  # fmt: skip
    assert typed is not None and typed.fetchall() == [({"echo": "hi"},)]
