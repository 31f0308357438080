"""EXPLAIN over an endpoint of several served entities: each entity with its share, kind and model, the
fallbacks in the order they are asked, and a cost that mixes the entities' prices by the route weights."""

from __future__ import annotations

import duckdb
import pytest
from servers import FakeServer

import aifuncs
from aifuncs import ServedEntity


@pytest.fixture
def tickets(con: duckdb.DuckDBPyConnection) -> duckdb.DuckDBPyConnection:
    con.execute(
        "CREATE TABLE tickets AS SELECT i AS id, 'ticket ' || (i % 1000) AS body FROM range(4000) t(i)"
    )
    return con


def scorer(name: str, url: str, share: int, usd_per_1k_rows: float, batch: int) -> ServedEntity:
    options = {"url": url + "/invocations", "returns": "BIGINT", "usd_per_1k_rows": usd_per_1k_rows,
               "max_batch_rows": batch}  # fmt: skip
    return ServedEntity(name, "serving", options, share)


def test_rows_requests_and_cost_are_split_by_the_weights(tickets: duckdb.DuckDBPyConnection) -> None:
    query = "SELECT ai_query('churn', id % 1000) FROM tickets"
    with FakeServer() as a, FakeServer() as b:
        aifuncs.endpoints.create(
            "churn",
            served_entities=[scorer("a", a.url, 80, 0.01, 100), scorer("b", b.url, 20, 0.05, 256)],
        )
        plan = aifuncs.explain(tickets, query)
        assert a.stats.requests + b.stats.requests == 0  # EXPLAIN calls no model
        (call,) = plan.calls
        assert call.rows_to_send == 1000  # 1,000 distinct requests
        assert [(e["name"], e["rows"]) for e in call.entities] == [("a", 800), ("b", 200)]
        assert call.model_requests == 8 + 1  # 800 rows at 100 a request, 200 at 256 (each its own size)
        assert call.cost_usd == pytest.approx(0.8 * 0.01 + 0.2 * 0.05)  # each entity's rows at its price
        assert [e["cost_usd"] for e in call.entities] == [pytest.approx(0.008), pytest.approx(0.01)]
        shown = str(plan)
        assert "endpoint     churn (v1, 2 served entities), bulk path" in shown
        assert f"entity       a 80% (serving {a.url}/invocations): 800 rows, ~$0.0080" in shown
        assert f"entity       b 20% (serving {b.url}/invocations): 200 rows, ~$0.0100" in shown
        assert "Estimated total: ~$0.0180" in shown
        tickets.execute(query).fetchall()
        sent = (a.stats.rows, b.stats.rows)
        asked = a.stats.requests + b.stats.requests
    assert sum(sent) == 1000 and abs(sent[1] - 200) <= 60, sent  # what EXPLAIN said, within the draw's spread
    assert abs(asked - 9) <= 2, asked


def chat(name: str, url: str, share: int, usd_in: float, usd_out: float, max_tokens: int = 0) -> ServedEntity:
    """An OpenAI entity; with max_tokens an Anthropic one (whose answers that option bounds)."""
    options = {"model": f"m-{name}", "base_url": url + "/v1", "usd_per_1m_input_tokens": usd_in,
               "usd_per_1m_output_tokens": usd_out, **({"max_tokens": max_tokens} if max_tokens else {})}  # fmt: skip
    return ServedEntity(name, "anthropic" if max_tokens else "openai", options, share)


def test_an_llm_mix_costs_the_weighted_sum_of_its_entities_alone(tickets: duckdb.DuckDBPyConnection) -> None:
    """Each entity's estimate as a one-model endpoint, weighted by its share, is the mix's estimate."""
    query = "SELECT ai_query('{}', body) FROM tickets"
    with FakeServer() as server:
        small = chat("small", server.url, 75, 0.15, 0.6)
        big = chat("big", server.url, 25, 2.5, 10.0, max_tokens=100)
        spare = chat("spare", server.url, 0, 50.0, 50.0)  # a fallback only: no share of the cost
        aifuncs.endpoints.create("mix", served_entities=[small, big, spare])
        for entity in (small, big):
            aifuncs.endpoints.create(f"only-{entity.name}", kind=entity.kind, **entity.options)
        (mixed,) = aifuncs.explain(tickets, query.format("mix")).calls
        alone = {
            e.name: aifuncs.explain(tickets, query.format(f"only-{e.name}")).calls[0] for e in (small, big)
        }
        assert server.stats.requests == 0
    assert mixed.rows_to_send == 4000  # a sampling model: every row
    assert mixed.cost_usd == pytest.approx(0.75 * alone["small"].cost_usd + 0.25 * alone["big"].cost_usd)
    assert mixed.output_tokens == 3000 * 256 + 1000 * 100  # the usual 256 a row, and big's max_tokens
    assert mixed.input_tokens == alone["small"].input_tokens
    assert [(e["name"], e["model"], e["rows"]) for e in mixed.entities] == [
        ("small", "m-small", 3000),
        ("big", "m-big", 1000),
        ("spare", "m-spare", 0),
    ]
    shown = str(aifuncs.explain(tickets, query.format("mix")))
    assert "entity       big 25% (anthropic m-big): 1,000 rows, ~$" in shown
    assert "entity       spare 0% (openai m-spare): fallback only" in shown


def test_fallbacks_are_shown_in_the_order_they_are_asked(tickets: duckdb.DuckDBPyConnection) -> None:
    with FakeServer() as server:
        aifuncs.endpoints.create(
            "mix",
            served_entities=[chat("small", server.url, 90, 1, 1), chat("big", server.url, 10, 1, 1)],
        )
        aifuncs.endpoints.create("backup", kind="openai", model="m-backup", base_url=server.url + "/v1")
        aifuncs.endpoints.create("last", kind="openai", model="m-last", base_url=server.url + "/v1")
        query = "SELECT ai_query('mix', body) FROM tickets"
        assert aifuncs.explain(tickets, query).calls[0].fallback == []  # off: a failed request fails
        aifuncs.endpoints.put_ai_gateway("mix", {"fallback_config": {"enabled": True, "endpoint": "backup"}})
        aifuncs.endpoints.put_ai_gateway("backup", {"fallback_config": {"enabled": True, "endpoint": "last"}})
        plan = aifuncs.explain(tickets, query)
        assert server.stats.requests == 0
    assert plan.calls[0].fallback == [
        "the other entities of mix in list order",
        "endpoint backup (openai m-backup)",
        "endpoint last (openai m-last)",
    ]
    assert (
        "  fallback     the other entities of mix in list order -> endpoint backup (openai m-backup)"
        " -> endpoint last (openai m-last) (for failed requests only: not in the cost)"
    ) in str(plan)


def test_an_unpriced_entity_leaves_the_cost_out_and_says_which(tickets: duckdb.DuckDBPyConnection) -> None:
    with FakeServer() as server:
        unpriced = ServedEntity("free", "openai", {"model": "m", "base_url": server.url + "/v1"}, 50)
        aifuncs.endpoints.create("mix", served_entities=[chat("small", server.url, 50, 1, 1), unpriced])
        (call,) = aifuncs.explain(tickets, "SELECT ai_query('mix', body) FROM tickets").calls
    assert call.cost_usd is None
    assert "no prices on served entities free: the cost is left out" in call.notes


def test_a_caller_sees_only_the_fallbacks_it_may_query(monkeypatch: pytest.MonkeyPatch) -> None:
    """EXPLAIN names a fallback endpoint only to a caller the request would really fall back for."""
    import aifuncs.governance as gov

    monkeypatch.delenv("AIFUNCS_TOKEN", raising=False)
    with FakeServer() as server:
        aifuncs.endpoints.create(
            "mix", served_entities=[chat("small", server.url, 90, 1, 1), chat("big", server.url, 10, 1, 1)]
        )
        aifuncs.endpoints.create("ops-backup", kind="openai", model="m-ops", base_url=server.url + "/v1")
        aifuncs.endpoints.put_ai_gateway(
            "mix", {"fallback_config": {"enabled": True, "endpoint": "ops-backup"}}
        )
        gov.create_user("alice")
        aifuncs.endpoints.update_permissions("mix", [{"user_name": "alice", "permission_level": "CAN_QUERY"}])
        con = aifuncs.connect(token=gov.create_token("alice"))
        con.execute("CREATE TABLE t AS SELECT 'x' || i AS body FROM range(10) t(i)")
        plan = aifuncs.explain(con, "SELECT ai_query('mix', body) FROM t")
        con.close()
        assert server.stats.requests == 0
    assert plan.calls[0].fallback == ["the other entities of mix in list order"]
    assert "ops-backup" not in str(plan) and "m-ops" not in str(plan)
