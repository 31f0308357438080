from __future__ import annotations

import pytest
import sqlglot
from sqlglot import exp

from aifuncs._types import to_duckdb_type
from aifuncs.errors import ArgumentError, SqlError
from aifuncs.functions import get_spec
from aifuncs.planner import bind_arguments, rewrite, split_statements
from aifuncs.planner._rewrite import EngineHooks, PlannedStatement


def _call(sql: str, dialect: str = "duckdb") -> exp.Anonymous:
    node = sqlglot.parse_one(sql, read=dialect).find(exp.Anonymous)
    assert node is not None
    return node


def test_spec_is_read_from_udfs() -> None:
    spec = get_spec("AI_QUERY")
    assert spec is not None
    assert [p.name for p in spec.params] == [
        "endpoint",
        "request",
        "returnType",
        "failOnError",
        "modelParameters",
        "responseFormat",
        "cache",
    ]
    assert spec.param("failonerror").default is True  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("sql", "dialect"),
    [
        ("SELECT ai_query('e', x, returnType => 'INT', failOnError => false)", "databricks"),
        ("SELECT ai_query('e', x, returnType := 'INT', failOnError := false)", "duckdb"),
        ("SELECT ai_query('e', x, 'INT', false)", "duckdb"),
        (
            "SELECT ai_query(endpoint => 'e', request => x, failOnError => false, returnType => 'INT')",
            "databricks",
        ),
    ],
)
def test_positional_and_named_arguments_bind_alike(sql: str, dialect: str) -> None:
    bound = bind_arguments(get_spec("ai_query"), _call(sql, dialect))  # type: ignore[arg-type]
    assert {k: v.sql() for k, v in bound.items()} == {
        "endpoint": "'e'",
        "request": "x",
        "returnType": "'INT'",
        "failOnError": "FALSE",
    }


def test_binding_errors() -> None:
    spec = get_spec("ai_query")
    with pytest.raises(ArgumentError, match="given twice"):
        bind_arguments(spec, _call("SELECT ai_query('e', x, request => y)"))  # type: ignore[arg-type]
    with pytest.raises(ArgumentError, match="positional argument follows a named one"):
        bind_arguments(spec, _call("SELECT ai_query('e', returnType => 'INT', x)"))  # type: ignore[arg-type]
    with pytest.raises(ArgumentError, match="at most 7 arguments"):
        bind_arguments(spec, _call("SELECT ai_query(1, 2, 3, 4, 5, 6, 7, 8)"))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("databricks", "duckdb"),
    [
        ("STRING", "TEXT"),
        ("ARRAY<STRING>", "TEXT[]"),
        ("STRUCT<label: STRING, score: DOUBLE>", "STRUCT(label TEXT, score DOUBLE)"),
        ("MAP<STRING, INT>", "MAP(TEXT, INT)"),
        ("DECIMAL(10,2)", "DECIMAL(10, 2)"),
    ],
)
def test_databricks_types_convert(databricks: str, duckdb: str) -> None:
    assert to_duckdb_type(databricks) == duckdb


def test_queries_without_ai_calls_pass_through_untouched() -> None:
    hooks = EngineHooks(describe=lambda q: "X", evaluate=lambda q: None, register=lambda c, t: "f")
    query = "SELECT * EXCLUDE (a) FROM t QUALIFY row_number() OVER () = 1"
    assert rewrite(query, "duckdb", hooks) == [PlannedStatement(query)]


def test_unparseable_ai_query_names_the_position() -> None:
    hooks = EngineHooks(describe=lambda q: "X", evaluate=lambda q: None, register=lambda c, t: "f")
    with pytest.raises(SqlError, match="line 1, column"):
        rewrite("SELECT ai_query('e', (1 FROM t", "duckdb", hooks)


def test_split_statements_respects_strings_and_comments() -> None:
    assert split_statements("SELECT 'a;b'; SELECT 2;\n-- only a comment\n", "duckdb") == [
        "SELECT 'a;b'",
        "SELECT 2",
    ]
