"""EXPLAIN with cost: counts measured before any model call, and matching what the query then sends."""

from __future__ import annotations

import duckdb
import pytest
from servers import FakeServer

import aifuncs


@pytest.fixture
def tickets(con: duckdb.DuckDBPyConnection) -> duckdb.DuckDBPyConnection:
    con.execute(
        "CREATE TABLE tickets AS SELECT i AS id, 'ticket body ' || (i % 300) AS body, i % 1000 AS code"
        " FROM range(10000) t(i)"
    )
    return con


def test_explain_predicts_what_the_query_sends_and_calls_no_model(tickets: duckdb.DuckDBPyConnection) -> None:
    query = "SELECT id, ai_query('churn', code) AS churn FROM tickets WHERE id < 5000"
    with FakeServer() as server:
        aifuncs.endpoints.create(
            "churn", kind="serving", url=server.url + "/invocations", returns="BIGINT", usd_per_1k_rows=0.02
        )
        plan = aifuncs.explain(tickets, query)
        assert server.stats.requests == 0
        (call,) = plan.calls
        assert (call.endpoint, call.path, call.reuse) == ("churn", "bulk", "store")
        assert (call.rows, call.requests, call.distinct, call.cached) == (5000, 5000, 1000, 0)
        assert (call.rows_to_send, call.model_requests) == (1000, 4)  # 256 rows per request
        assert call.cost_usd == pytest.approx(0.02)
        assert "will send    1,000 rows in 4 requests" in str(plan)
        aifuncs.sql(tickets, query).fetchall()
        assert (server.stats.rows, server.stats.requests) == (1000, 4)  # as predicted
        again = aifuncs.explain(tickets, query).calls[0]
        assert (again.cached, again.rows_to_send, again.cost_usd) == (1000, 0, 0.0)


def test_tokens_and_cost_of_an_llm_call(tickets: duckdb.DuckDBPyConnection) -> None:
    with FakeServer() as server:
        aifuncs.endpoints.create(
            "gpt",
            kind="openai",
            model="m",
            base_url=server.url + "/v1",
            usd_per_1m_input_tokens=1.0,
            usd_per_1m_output_tokens=2.0,
        )
        sampled = aifuncs.explain(
            tickets, "SELECT ai_query('gpt', body, modelParameters => {'max_tokens': 10}) FROM tickets"
        ).calls[0]
        assert server.stats.requests == 0
    assert sampled.reuse == "none" and sampled.rows_to_send == 10000  # a sampling model: every row
    chars = sum(len(f"ticket body {i % 300}") for i in range(10000))
    assert sampled.input_tokens == -(-chars // 4)
    assert sampled.output_tokens == 10000 * 10
    assert sampled.cost_usd == pytest.approx(sampled.input_tokens / 1e6 + 2 * sampled.output_tokens / 1e6)


def test_ai_calls_in_filters_and_requests_are_never_run_by_explain(
    tickets: duckdb.DuckDBPyConnection,
) -> None:
    with FakeServer() as server:
        aifuncs.endpoints.create("gpt", kind="openai", model="m", base_url=server.url + "/v1")
        plan = aifuncs.explain(
            tickets,
            "SELECT ai_query('gpt', 'Translate: ' || ai_query('gpt', body)) FROM tickets"
            " WHERE ai_query('gpt', body) = 'yes' AND id < 100",
        )
        assert server.stats.requests == 0
    outer, inner, in_filter = plan.calls
    assert outer.call.startswith("ai_query('gpt', 'Translate: '") and outer.rows is None
    assert "rows unknown" in " ".join(outer.notes)
    assert inner.rows == 100 and in_filter.rows == 100  # the AI filter is left out: an upper bound
    assert "upper bound" in " ".join(inner.notes)


def test_explain_from_the_shell(tickets: duckdb.DuckDBPyConnection, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from test_cli import run

    database = tmp_path / "w.duckdb"
    with duckdb.connect(str(database)) as con:
        con.execute("CREATE TABLE t AS SELECT range AS x FROM range(50)")
    with FakeServer() as server:
        aifuncs.endpoints.create("double", kind="serving", url=server.url + "/invocations", returns="BIGINT")
        shown = run("explain", "SELECT ai_query('double', x % 5) FROM t", "--db", str(database))
        assert server.stats.requests == 0
    assert shown.returncode == 0, shown.stderr
    assert "50 rows, 50 non-NULL requests, 5 distinct, 0 cached" in shown.stdout
    assert run("explain", "SELECT 1").stdout.startswith("No AI calls")
