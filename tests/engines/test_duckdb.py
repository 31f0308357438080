from __future__ import annotations

from pathlib import Path

import duckdb
import pytest
import sample_models

import aifuncs
from aifuncs.errors import ArgumentError, UnknownEndpoint


@pytest.fixture
def doubler() -> None:
    aifuncs.endpoints.create("doubler", kind="python", function="sample_models:doubled", returns="DOUBLE")
    aifuncs.endpoints.create("flaky", kind="python", function="sample_models:fails_on_13", returns="DOUBLE")
    sample_models.CALLS.clear()


def test_plain_connection_accepts_ai_query_with_a_varchar_default(con, doubler) -> None:  # type: ignore[no-untyped-def]
    rows = con.sql("SELECT ai_query('doubler', i::DOUBLE) AS r FROM range(3) t(i) ORDER BY i").fetchall()
    assert rows == [("0.0",), ("2.0",), ("4.0",)]
    assert con.sql("SELECT typeof(ai_query('doubler', 1.5::DOUBLE))").fetchall() == [("VARCHAR",)]


def test_plain_connection_named_arguments_and_struct_requests(con, doubler) -> None:  # type: ignore[no-untyped-def]
    rows = con.sql(
        "SELECT ai_query('doubler', struct_pack(a := i::DOUBLE, b := 100.0), returnType => 'INT',"
        " failOnError := true) FROM range(2) t(i) ORDER BY i"
    ).fetchall()
    assert rows == [("100",), ("102",)]


def test_sql_returns_the_endpoint_type_and_honours_return_type(con, doubler) -> None:  # type: ignore[no-untyped-def]
    rel = aifuncs.sql(con, "SELECT i, ai_query('doubler', i::DOUBLE) AS r FROM range(4) t(i) ORDER BY i")
    assert rel.types == ["BIGINT", "DOUBLE"]
    assert [r[1] for r in rel.fetchall()] == [0.0, 2.0, 4.0, 6.0]
    rel = aifuncs.sql(
        con, "SELECT ai_query('doubler', i::DOUBLE, returnType => 'STRING') AS r FROM range(2) t(i)"
    )
    assert rel.types == ["VARCHAR"]


def test_databricks_struct_return_type_is_converted(con) -> None:  # type: ignore[no-untyped-def]
    aifuncs.endpoints.create("pairs", kind="python", function="sample_models:doubled")
    with pytest.raises(duckdb.Error, match="cannot be converted"):  # at once, or as rows are fetched
        aifuncs.sql(
            con,
            "SELECT ai_query('pairs', i::DOUBLE, returnType => 'ARRAY<INT>') AS r FROM range(1) t(i)",
        ).fetchall()  # a double per row cannot become an array: the error names the types


def test_fail_on_error_false_keeps_failures_per_row(con, doubler) -> None:  # type: ignore[no-untyped-def]
    rel = aifuncs.sql(
        con,
        "SELECT i, ai_query('flaky', i::DOUBLE, failOnError => false) AS r FROM range(10, 16) t(i) ORDER BY i",
    )
    assert str(rel.types[1]) == "STRUCT(result DOUBLE, errorMessage VARCHAR)"
    rows = {i: r for i, r in rel.fetchall()}
    assert rows[13] == {"result": None, "errorMessage": "ValueError: 13 is unlucky"}
    assert {i: r["result"] for i, r in rows.items() if i != 13} == {
        10: 100.0,
        11: 110.0,
        12: 120.0,
        14: 140.0,
        15: 150.0,
    }
    results = aifuncs.sql(
        con,
        "SELECT r.result, r.errorMessage FROM (SELECT ai_query('flaky', 13.0, failOnError => false) AS r)",
    ).fetchall()
    assert results == [(None, "ValueError: 13 is unlucky")]


def test_fail_on_error_true_names_endpoint_rows_and_message(con, doubler) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(
        duckdb.Error, match=r"Endpoint 'flaky' failed on a batch of 6 rows: ValueError: 13 is unlucky"
    ):
        aifuncs.sql(con, "SELECT ai_query('flaky', i::DOUBLE) FROM range(10, 16) t(i)").fetchall()


def test_null_requests_give_null_without_a_model_call(con, doubler) -> None:  # type: ignore[no-untyped-def]
    rows = aifuncs.sql(
        con,
        "SELECT ai_query('doubler', CASE WHEN i % 2 = 0 THEN i::DOUBLE END) FROM range(6) t(i) ORDER BY i",
    ).fetchall()
    assert rows == [(0.0,), (None,), (4.0,), (None,), (8.0,), (None,)]
    assert sum(sample_models.CALLS) == 3  # only the non-NULL rows reached the model
    sample_models.CALLS.clear()
    assert aifuncs.sql(con, "SELECT ai_query('doubler', NULL::DOUBLE)").fetchall() == [(None,)]
    assert sample_models.CALLS == []


def test_unknown_endpoint_fails_before_any_model_call(con, doubler) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(UnknownEndpoint, match="Did you mean 'doubler'"):
        aifuncs.sql(con, "SELECT ai_query('doubler', 1.0), ai_query('dubler', 1.0)")
    assert sample_models.CALLS == []


def test_argument_errors_name_the_problem(con, doubler) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ArgumentError, match="no argument 'returntype2'"):
        aifuncs.sql(con, "SELECT ai_query('doubler', 1.0, returntype2 => 'INT')")
    with pytest.raises(ArgumentError, match="missing request"):
        aifuncs.sql(con, "SELECT ai_query('doubler')")
    with pytest.raises(ArgumentError, match="failOnError must be true or false"):
        aifuncs.sql(con, "SELECT ai_query('doubler', 1.0, failOnError => 'no')")
    for bad in ("STRUCT<a: NOPE>", "NOPE", "ARRAY<>"):
        with pytest.raises(ArgumentError, match="not a DuckDB type|Cannot read the type"):
            aifuncs.sql(con, f"SELECT ai_query('doubler', 1.0, returnType => '{bad}')")


def test_row_order_holds_across_vectors_and_threads(con, doubler) -> None:  # type: ignore[no-untyped-def]
    con.execute("SET threads = 2")
    con.execute("CREATE TABLE t AS SELECT i, (i % 97)::DOUBLE AS a, i::DOUBLE AS b FROM range(50000) t(i)")
    con.execute("CREATE VIEW streamed AS SELECT * FROM t")  # a view, every row asked: streamed by the UDF
    wrong = aifuncs.sql(
        con,
        "SELECT count(*) FROM streamed WHERE ai_query('doubler', struct_pack(a, b), cache => false) <> a * 2 + b",
    ).fetchall()
    assert wrong == [(0,)]
    assert max(sample_models.CALLS) <= 2048 and sum(sample_models.CALLS) == 50000


def test_calls_in_ctes_subqueries_and_ctas(con, doubler) -> None:  # type: ignore[no-untyped-def]
    aifuncs.sql(con, "CREATE TABLE src AS SELECT i::DOUBLE AS a FROM range(5) t(i)")
    aifuncs.sql(
        con,
        "CREATE TABLE out AS WITH base AS (SELECT a FROM src WHERE a > 1)"
        " SELECT a, ai_query('doubler', a) AS d FROM base",
    )
    assert con.sql("SELECT a, d FROM out ORDER BY a").fetchall() == [(2.0, 4.0), (3.0, 6.0), (4.0, 8.0)]
    nested = aifuncs.sql(
        con, "SELECT ai_query('doubler', ai_query('doubler', a)) FROM src WHERE a = 3"
    ).fetchall()
    assert nested == [(12.0,)]


def test_correlated_request_falls_back_to_json(con, doubler) -> None:  # type: ignore[no-untyped-def]
    con.execute("CREATE TABLE o AS SELECT i::DOUBLE AS a FROM range(3) t(i)")
    rows = aifuncs.sql(
        con, "SELECT a, (SELECT ai_query('doubler', o.a + x) FROM (SELECT 1.0 AS x)) AS d FROM o ORDER BY a"
    ).fetchall()
    assert rows == [(0.0, 2.0), (1.0, 4.0), (2.0, 6.0)]


def test_several_statements_run_in_order(con, doubler) -> None:  # type: ignore[no-untyped-def]
    result = aifuncs.sql(
        con, "CREATE TABLE s AS SELECT 2.0 AS a; SELECT ai_query('doubler', a) AS d FROM s; -- done"
    )
    assert result is not None and result.fetchall() == [(4.0,)]


def test_arrow_input_format_and_wrong_lengths(con) -> None:  # type: ignore[no-untyped-def]
    aifuncs.endpoints.create(
        "len", kind="python", function="sample_models:arrow_length", input_format="arrow", returns="INT"
    )
    assert aifuncs.sql(con, "SELECT ai_query('len', 'hello')").fetchall() == [(5,)]
    aifuncs.endpoints.create("short", kind="python", function="sample_models:wrong_length", returns="INT")
    with pytest.raises(duckdb.Error, match="returned 1 results for 3 requests"):
        aifuncs.sql(con, "SELECT ai_query('short', i) FROM range(3) t(i)").fetchall()


def test_a_forked_child_runs_ai_queries_of_its_own() -> None:
    """multiprocessing forks on Linux: the parent's event loop, store writer and connections stay behind, and
    the child's first AI call waited on them forever."""
    from forking import run_forking

    tests_dir = Path(__file__).resolve().parents[1]
    done = run_forking(
        f"""
        import sys
        sys.path.insert(0, {str(tests_dir)!r})
        import aifuncs

        aifuncs.endpoints.create("doubler", kind="python", function="sample_models:doubled", returns="DOUBLE")
        queries = [
            "SELECT sum(ai_query('doubler', i::DOUBLE)) FROM range(10) t(i)",  # the bulk path
            "SELECT sum(ai_query('doubler', i::DOUBLE)) FROM range(10) t(i) LIMIT 1",  # streamed through the UDF
            "SELECT sum(ai_query('doubler', (i % 3)::DOUBLE, cache => true)) FROM range(10) t(i)",  # the store
        ]

        def answers():
            con = aifuncs.connect()
            found = [aifuncs.sql(con, q).fetchall()[0][0] for q in queries]
            import pandas as pd  # the pandas accessors keep a DuckDB connection per thread

            return [*found, float(pd.Series([1.0, 2.0]).ai.query("doubler").sum())]

        print("parent", answers(), flush=True)

        def child():
            print("child", answers(), flush=True)

        print("child exit", in_a_forked_child(child))
        """
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[:3] == [
        "parent [90.0, 90.0, 18.0, 6.0]",
        "child [90.0, 90.0, 18.0, 6.0]",
        "child exit 0",
    ]


@pytest.mark.parametrize(
    "source", ["t", "v"]
)  # a table (the bulk path) and a view (streamed through the UDF)
@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("SELECT i, ai_query('doubler', i::DOUBLE) AS p FROM {src} ORDER BY p DESC LIMIT 2", [(9, 18.0), (8, 16.0)]),
        ("SELECT i, ai_query('doubler', i::DOUBLE) AS p FROM {src} ORDER BY p + 1 DESC LIMIT 2", [(9, 18.0), (8, 16.0)]),
        ("SELECT i, ai_query('doubler', i::DOUBLE, failOnError => false) AS p FROM {src} ORDER BY p.result DESC"
         " LIMIT 1", [(9, {"result": 18.0, "errorMessage": None})]),
        ("SELECT ai_query('doubler', k::DOUBLE) AS p, count(*) FROM {src} GROUP BY p ORDER BY p", [(0.0, 4), (2.0, 3), (4.0, 3)]),
        ("SELECT k, ai_query('doubler', k::DOUBLE) AS p, count(*) FROM {src} GROUP BY k HAVING p > 1 AND count(*) > 2"
         " ORDER BY k", [(1, 2.0, 3), (2, 4.0, 3)]),
        ("SELECT i, ai_query('doubler', k::DOUBLE) AS p FROM {src}"
         " QUALIFY row_number() OVER (PARTITION BY p ORDER BY i) = 1 ORDER BY i", [(0, 0.0), (1, 2.0), (2, 4.0)]),
    ],
)  # fmt: skip
def test_clauses_may_name_an_ai_calls_alias(con, doubler, source: str, query: str, expected: list) -> None:  # type: ignore[no-untyped-def,type-arg]
    con.execute("CREATE TABLE t AS SELECT i, i % 3 AS k FROM range(10) r(i)")
    con.execute("CREATE VIEW v AS SELECT * FROM t")
    if source == "v_fresh":
        source = "v"
        query = query.replace("::DOUBLE", "::DOUBLE, cache => false")
    assert aifuncs.sql(con, query.format(src=source)).fetchall() == expected
