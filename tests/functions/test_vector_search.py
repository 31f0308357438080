"""Vector indexes and vector_search(...) from SQL, on the offline embedding model."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pytest

import aifuncs
from aifuncs.errors import AifuncsError

DOCS = [
    (1, "Refunds are paid within 14 days of a return."),
    (2, "Shipping is free for orders above 50 euros."),
    (3, "Reset your password from the login page."),
    (4, "We accept returns of unused items for 30 days."),
]


@pytest.fixture
def docs(con: duckdb.DuckDBPyConnection) -> duckdb.DuckDBPyConnection:
    con.execute("CREATE TABLE docs (id INTEGER, body VARCHAR)")
    con.executemany("INSERT INTO docs VALUES (?, ?)", DOCS)
    return con


def test_search_returns_the_nearest_rows_with_scores(docs: duckdb.DuckDBPyConnection) -> None:
    assert aifuncs.index.create(docs, "docs_idx", table="docs", column="body") == 4
    relation = aifuncs.sql(
        docs,
        "SELECT id, search_score FROM vector_search(index => 'docs_idx', query => 'I forgot my password',"
        " num_results => 2) ORDER BY search_score DESC",
    )
    assert relation is not None and [str(t) for t in relation.types] == ["INTEGER", "FLOAT"]
    rows = relation.fetchall()
    assert [r[0] for r in rows] == [3, rows[1][0]] and len(rows) == 2
    assert rows[0][1] > rows[1][1] > -1
    money = aifuncs.sql(
        docs,
        "SELECT id FROM vector_search(index => 'docs_idx', query => 'how do I get my money back') LIMIT 1",
    ).fetchall()
    assert money == [(1,)]
    joined = aifuncs.sql(  # composes with SQL like any subquery
        docs,
        "SELECT d.id, v.search_score > 0 FROM docs d JOIN vector_search(index => 'docs_idx', query => 'shipping"
        " costs', num_results => 1) v USING (id)",
    ).fetchall()
    assert joined == [(2, True)]
    assert [i["name"] for i in aifuncs.index.list(docs)] == ["docs_idx"]


def test_index_errors_name_the_problem(docs: duckdb.DuckDBPyConnection) -> None:
    with pytest.raises(AifuncsError, match="There is no vector index 'missing'"):
        aifuncs.sql(docs, "SELECT * FROM vector_search(index => 'missing', query => 'x')")
    with pytest.raises(AifuncsError, match="has no column 'text'; its columns: id, body"):
        aifuncs.index.create(docs, "i", table="docs", column="text")
    aifuncs.index.create(docs, "i", table="docs", column="body")
    with pytest.raises(AifuncsError, match="exists; pass replace=True"):
        aifuncs.index.create(docs, "i", table="docs", column="body")
    with pytest.raises(AifuncsError, match="num_results => a positive number"):
        aifuncs.sql(docs, "SELECT * FROM vector_search(index => 'i', query => 'x', num_results => 0)")
    aifuncs.index.drop(docs, "i")
    assert aifuncs.index.list(docs) == []


def test_index_from_the_shell(tmp_path: Path) -> None:
    from test_cli import run

    database = tmp_path / "w.duckdb"
    with duckdb.connect(str(database)) as con:
        con.execute("CREATE TABLE docs (id INTEGER, body VARCHAR)")
        con.executemany("INSERT INTO docs VALUES (?, ?)", DOCS)
    made = run("index", "create", "docs_idx", "--table", "docs", "--column", "body", "--db", str(database))
    assert made.returncode == 0, made.stderr
    assert "Indexed 4 rows of docs.body as 'docs_idx'" in made.stdout
    found = run(
        "query",
        "SELECT id FROM vector_search(index => 'docs_idx', query => 'password help', num_results => 1)",
        "--db",
        str(database),
        "--format",
        "csv",
    )
    assert found.stdout.split() == ["id", "3"], found.stderr
    assert "docs_idx" in run("index", "list", "--db", str(database)).stdout
