"""Conformance: Databricks SQL with AI functions, run on DuckDB, with the types a Databricks user expects.

Each case is a query as a Databricks user writes it (documented argument forms of ai_query: positional
and `=>` arguments, named_struct requests, returnType / failOnError / modelParameters / responseFormat,
results read as `r.result` and `r.errorMessage`) and the DuckDB types of its columns. They run against
protocol-faithful loopback servers (OpenAI chat, MLflow /invocations) started here.
"""

from __future__ import annotations

from collections.abc import Iterator

import duckdb
import pytest
from servers import FakeServer

import aifuncs
from aifuncs.errors import SqlError

RESULT_STRUCT = "STRUCT(result {}, errorMessage VARCHAR)"

CASES: list[tuple[str, list[str]]] = [
    ("SELECT ai_query('llm', text) AS a FROM reviews", ["VARCHAR"]),
    ("SELECT ai_query('llm', CONCAT('Summarize: ', text)) AS a FROM reviews", ["VARCHAR"]),
    ("SELECT ai_query(endpoint => 'llm', request => text) AS a FROM reviews", ["VARCHAR"]),
    (
        "SELECT ai_query('llm', text, modelParameters => named_struct('max_tokens', 100, 'temperature', 0.0))"
        " FROM reviews",
        ["VARCHAR"],
    ),
    (
        "SELECT ai_query('llm', text, failOnError => false) AS r FROM reviews",
        [RESULT_STRUCT.format("VARCHAR")],
    ),
    (
        "SELECT r.result, r.errorMessage FROM (SELECT ai_query('llm', text, failOnError => false) AS r FROM reviews)",
        ["VARCHAR", "VARCHAR"],
    ),
    ("SELECT ai_query('llm', text, failOnError => false).result AS a FROM reviews", ["VARCHAR"]),
    (
        "SELECT ai_query('llm', text, returnType => 'STRUCT<echo: STRING, length: INT>') AS r FROM reviews",
        ["STRUCT(echo VARCHAR, length INTEGER)"],
    ),
    ("SELECT ai_query('llm', text, returnType => 'STRING') FROM reviews", ["VARCHAR"]),
    (
        "SELECT ai_query('llm', text, returnType => 'ARRAY<STRING>', failOnError => false) FROM reviews",
        [RESULT_STRUCT.format("VARCHAR[]")],
    ),
    (
        "SELECT ai_query('llm', text, returnType => 'MAP<STRING, INT>', failOnError => false) FROM reviews",
        [RESULT_STRUCT.format("MAP(VARCHAR, INTEGER)")],
    ),
    (
        "SELECT ai_query('llm', text, returnType => 'DECIMAL(10,2)', failOnError => false) FROM reviews",
        [RESULT_STRUCT.format("DECIMAL(10,2)")],
    ),
    (
        "SELECT ai_query('llm', text, returnType => 'TIMESTAMP', failOnError => FALSE) FROM reviews",
        [RESULT_STRUCT.format("TIMESTAMP WITH TIME ZONE")],  # Databricks' TIMESTAMP is zoned
    ),
    (
        "SELECT ai_query('llm', text, returnType => 'TIMESTAMP_NTZ', failOnError => FALSE) FROM reviews",
        [RESULT_STRUCT.format("TIMESTAMP")],
    ),
    (
        "SELECT ai_query('llm', text, responseFormat => 'STRUCT<echo: STRING, length: INT>') FROM reviews",
        ["VARCHAR"],
    ),
    (
        "SELECT from_json(ai_query('llm', text, responseFormat => 'STRUCT<echo: STRING, length: INT>'),"
        " 'echo STRING, length INT') AS parsed FROM reviews",
        ["STRUCT(echo VARCHAR, length INTEGER)"],
    ),
    (
        """SELECT ai_query('llm', text, responseFormat => '{"type": "json_schema", "json_schema": {"name": "r","""
        """ "schema": {"type": "object", "properties": {"echo": {"type": "string"}}}, "strict": true}}') FROM reviews""",
        ["VARCHAR"],
    ),
    (
        "SELECT ai_query('scorer', named_struct('id', id, 'price', price, 'day', day)) AS s FROM reviews",
        ["DOUBLE"],
    ),
    ("SELECT ai_query('scorer', named_struct('id', id), returnType => 'BIGINT') FROM reviews", ["BIGINT"]),
    ("SELECT `id`, ai_query('llm', `text`) AS `answer` FROM reviews ORDER BY `id`", ["BIGINT", "VARCHAR"]),
    (
        "WITH recent AS (SELECT * FROM reviews WHERE id > 0) SELECT ai_query('llm', text) FROM recent",
        ["VARCHAR"],
    ),
    (
        "SELECT length(ai_query('llm', text)) AS n, count(*) AS c FROM reviews GROUP BY length(ai_query('llm', text))",
        ["BIGINT", "BIGINT"],
    ),
    (
        "SELECT ai_query('llm', text) FROM reviews WHERE ai_query('llm', text) LIKE 'echo%' LIMIT 2",
        ["VARCHAR"],
    ),
    (
        "SELECT ai_query('llm', text, failOnError => false, returnType => 'STRUCT<echo: STRING>').result.echo"
        " AS echo FROM reviews",
        ["VARCHAR"],
    ),
    # http_request, in the forms Databricks documents: named (any case) and positional arguments
    (
        "SELECT http_request(conn => 'crm', method => 'GET', path => CONCAT('/accounts/', id)) AS r FROM reviews",
        ['STRUCT(status_code INTEGER, "text" VARCHAR)'],
    ),
    (
        "SELECT http_request('crm', 'GET', '/accounts', NULL, map('Accept', 'application/json'),"
        " map('id', CAST(id AS STRING))).status_code AS s FROM reviews",
        ["INTEGER"],
    ),
    (
        "SELECT r.status_code, r.text FROM (SELECT http_request(CONN => 'crm', METHOD => 'GET', PATH => '/health',"
        " HEADERS => map('X-Request', text)) AS r FROM reviews)",
        ["INTEGER", "VARCHAR"],
    ),
    # ai_forecast, named and positional (the history as TABLE(name) and TABLE(SELECT ...))
    (
        "SELECT * FROM ai_forecast(TABLE(reviews), horizon => '2026-11-08', time_col => 'day', value_col => 'price')",
        ["DATE", "DOUBLE", "DOUBLE", "DOUBLE", "VARCHAR"],
    ),
    (
        "SELECT day, price_forecast FROM ai_forecast(TABLE(SELECT day, price FROM reviews), '2026-11-08', 'day',"
        " 'price', NULL, 0.8, 'D', 7, '{}')",
        ["DATE", "DOUBLE"],
    ),
    # ai_parse_document, with and without options; a text that is no document says so in error_status
    (
        "SELECT ai_parse_document(CAST(text AS BINARY), map('version', '2.0')) AS parsed FROM reviews",
        [
            'STRUCT("document" STRUCT(pages STRUCT(id INTEGER, image_uri VARCHAR)[], elements STRUCT(id INTEGER,'
            ' "type" VARCHAR, "content" VARCHAR, bbox STRUCT(coord DOUBLE[], page_id INTEGER)[], description'
            " VARCHAR)[]), error_status STRUCT(error_message VARCHAR, page_id INTEGER)[], metadata STRUCT(id VARCHAR,"
            ' "version" VARCHAR))'
        ],
    ),
    (
        "SELECT ai_parse_document(CAST(text AS BINARY)).error_status[0].error_message AS e FROM reviews",
        ["VARCHAR"],
    ),
]


@pytest.fixture
def reviews(con: duckdb.DuckDBPyConnection) -> Iterator[tuple[duckdb.DuckDBPyConnection, FakeServer]]:
    con.execute(
        "CREATE TABLE reviews AS SELECT i AS id, 'review ' || i AS text, (i * 1.5)::DECIMAL(6,2) AS price,"
        " DATE '2026-11-01' + i::INT AS day FROM range(4) t(i)"
    )
    with FakeServer(keep_bodies=True) as server:
        aifuncs.endpoints.create("llm", kind="openai", model="m", base_url=server.url + "/v1")
        aifuncs.endpoints.create("scorer", kind="serving", url=server.url + "/invocations", returns="DOUBLE")
        aifuncs.endpoints.create("crm", kind="http", base_url=server.url)
        yield con, server


@pytest.mark.parametrize(("query", "types"), CASES, ids=[f"case{i}" for i in range(len(CASES))])
def test_databricks_query_runs_with_databricks_types(
    reviews: tuple[duckdb.DuckDBPyConnection, FakeServer], query: str, types: list[str]
) -> None:
    con, _ = reviews
    relation = aifuncs.sql(con, query, dialect="databricks")
    assert relation is not None
    assert [str(t) for t in relation.types] == types
    rows = relation.fetchall()
    assert rows and rows[0][0] is not None


def test_arguments_reach_the_model_as_databricks_users_mean_them(
    reviews: tuple[duckdb.DuckDBPyConnection, FakeServer],
) -> None:
    con, server = reviews
    rows = aifuncs.sql(
        con,
        "SELECT id, from_json(ai_query('llm', CONCAT('Rate: ', text),"
        " modelParameters => named_struct('max_tokens', 20, 'temperature', 0.0),"
        " responseFormat => 'STRUCT<echo: STRING, length: INT>'), 'echo STRING, length INT') AS r"
        " FROM reviews ORDER BY id",
        dialect="databricks",
    ).fetchall()
    assert rows[1] == (1, {"echo": "Rate: review 1", "length": len("Rate: review 1")})
    body = next(b for b in server.stats.bodies if "messages" in b)
    assert body["max_tokens"] == 20 and body["temperature"] == 0.0
    assert body["response_format"]["type"] == "json_schema"
    scored = aifuncs.sql(
        con,
        "SELECT ai_query('scorer', named_struct('id', id, 'price', price, 'day', day)) FROM reviews",
        dialect="databricks",
    ).fetchall()
    assert len(scored) == 4
    split = next(b for b in server.stats.bodies if "dataframe_split" in b)["dataframe_split"]
    assert split["columns"] == ["id", "price", "day"]
    assert split["data"][1] == [1, 1.5, "2026-11-02"]  # DECIMAL as a number, DATE as ISO text


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("SELECT /*+ BROADCAST(reviews) */ ai_query('llm', text) FROM reviews", "a query hint"),
        (
            "SELECT ai_query('llm', text) FROM reviews\nDISTRIBUTE BY id",
            r"DISTRIBUTE BY at line 2, column 15",
        ),
        ("SELECT ai_query('llm', text) FROM reviews CLUSTER BY id", "CLUSTER BY at line 1"),
        ("SELECT 1;\nSELECT ai_query('llm', text) FROM reviews SORT BY id", "Statement 2 uses SORT BY"),
        ("SELECT ai_query('llm', text FROM reviews", "Cannot parse the query as databricks SQL at line 1"),
    ],
)
def test_what_cannot_be_translated_is_named_with_its_position(
    reviews: tuple[duckdb.DuckDBPyConnection, FakeServer], query: str, message: str
) -> None:
    con, server = reviews
    with pytest.raises(SqlError, match=message):
        aifuncs.sql(con, query, dialect="databricks")
    assert server.stats.requests == 0
