"""Budgets: refused before the first request when the estimate is over, stopped cleanly when the live count
reaches the limit, with the answers received kept for a rerun."""

from __future__ import annotations

import duckdb
import pytest
from servers import FakeServer

import aifuncs
from aifuncs.errors import BudgetExceeded


@pytest.fixture
def prompts(con: duckdb.DuckDBPyConnection) -> duckdb.DuckDBPyConnection:
    con.execute("CREATE TABLE prompts AS SELECT i AS id, 'p' || i AS body FROM range(200) t(i)")
    return con


def test_a_query_over_budget_is_refused_before_anything_is_sent(prompts: duckdb.DuckDBPyConnection) -> None:
    with FakeServer() as server:
        aifuncs.endpoints.create(
            "scorer", kind="serving", url=server.url + "/invocations", returns="BIGINT", usd_per_1k_rows=10.0
        )
        query = "SELECT ai_query('scorer', id) FROM prompts"  # 200 rows: $2.00
        with pytest.raises(BudgetExceeded, match=r"allows \$1.0000; this query is estimated at \$2.0000"):
            aifuncs.sql(prompts, query, max_cost_usd=1.0)
        with pytest.raises(BudgetExceeded, match="allows 0 requests"):
            aifuncs.sql(prompts, query, max_requests=0)
        assert server.stats.requests == 0
        assert len(aifuncs.sql(prompts, query, max_cost_usd=2.5).fetchall()) == 200


def test_a_query_stops_when_its_live_count_reaches_the_limit_and_resumes(
    prompts: duckdb.DuckDBPyConnection,
) -> None:
    # The estimate (1 output token per answer, as max_tokens says) passes; the server reports 2 output
    # tokens per answer and 1 input token per prompt, so the real count reaches the limit part-way.
    query = (
        "SELECT id, ai_query('llm', body, modelParameters => {'max_tokens': 1, 'temperature': 0}) AS a"
        " FROM prompts"
    )
    with FakeServer(delay_s=0.01) as server:
        aifuncs.endpoints.create(
            "llm", kind="openai", model="m", base_url=server.url + "/v1", max_concurrency=4
        )
        assert aifuncs.explain(prompts, query).calls[0].output_tokens == 200
        with pytest.raises(duckdb.Error, match="The query budget of 450 tokens is used up") as stopped:
            aifuncs.sql(prompts, query, max_tokens=450)
        assert isinstance(stopped.value.__cause__, BudgetExceeded)
        sent = server.stats.requests
        assert 150 <= sent < 160  # 3 tokens a request: stopped at 150, plus the few already in flight
        rows = aifuncs.sql(prompts, query).fetchall()  # no budget: finishes the rest only
        assert server.stats.requests == 200
    assert sorted(rows) == [(i, f"echo: p{i}") for i in range(200)]


def test_a_session_budget_counts_every_query(prompts: duckdb.DuckDBPyConnection) -> None:
    with FakeServer() as server:
        aifuncs.endpoints.create("scorer", kind="serving", url=server.url + "/invocations", returns="BIGINT")
        aifuncs.set_session_budget(max_requests=3)
        try:
            aifuncs.sql(prompts, "SELECT ai_query('scorer', id) FROM prompts WHERE id < 100").fetchall()  # 1
            aifuncs.sql(prompts, "SELECT ai_query('scorer', id) FROM prompts WHERE id >= 100").fetchall()  # 1
            with pytest.raises(
                BudgetExceeded, match="session budget allows 3 requests.*3 requests on top of 2"
            ):
                aifuncs.sql(
                    prompts, "SELECT ai_query('scorer', i) FROM range(1000, 1600) t(i)"
                )  # 256 a request
        finally:
            aifuncs.set_session_budget()
        assert server.stats.requests == 2


def test_budget_exit_code_from_the_shell(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from test_cli import run

    with FakeServer() as server:
        aifuncs.endpoints.create(
            "scorer", kind="serving", url=server.url + "/invocations", returns="BIGINT", usd_per_1k_rows=10.0
        )
        refused = run("query", "SELECT ai_query('scorer', i) FROM range(500) t(i)", "--max-cost", "1")
        assert server.stats.requests == 0
    assert refused.returncode == 3
    assert "budget allows $1.0000" in refused.stderr
