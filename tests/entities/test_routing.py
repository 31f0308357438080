"""Traffic split and fallbacks from SQL: each entity asked only for its share of rows, reusable requests
always on the same entity, a dead entity's rows answered by the others."""

from __future__ import annotations

from collections import Counter

import duckdb
from servers import FakeServer, Faults

import aifuncs
from aifuncs import ServedEntity


def chat(name: str, url: str, share: int, **options: object) -> ServedEntity:
    return ServedEntity(name, "openai", {"model": name, "base_url": url + "/v1", **options}, share)


def served(con: duckdb.DuckDBPyConnection) -> Counter[str]:
    con.execute("SELECT 1").fetchall()
    aifuncs.runtime.default_runtime().usage.flush()
    rows = con.execute(
        "SELECT served_entity, sum(rows) FROM aifuncs_usage WHERE status = 'ok' GROUP BY 1"
    ).fetchall()
    return Counter({entity: int(count) for entity, count in rows})


def test_rows_split_by_the_route_weights(con: duckdb.DuckDBPyConnection) -> None:
    with FakeServer() as prod, FakeServer() as candidate:
        aifuncs.endpoints.create(
            "ads",
            served_entities=[
                chat("prod", prod.url, 90, max_concurrency=32),
                chat("candidate", candidate.url, 10, max_concurrency=32),
            ],
        )
        answers = aifuncs.sql(
            con,
            "SELECT count(*), count(DISTINCT a) FROM (SELECT ai_query('ads', 'r' || i) a FROM range(10000) t(i))",
        ).fetchall()[0]
        asked = (prod.stats.requests, candidate.stats.requests)
    assert answers == (10000, 10000)
    assert sum(asked) == 10000  # each row asked once, of one entity
    assert abs(asked[1] / 10000 - 0.10) <= 0.02, asked  # within 2 points of the weights
    assert served(con) == Counter({"prod": asked[0], "candidate": asked[1]})  # usage says who answered


def test_reusable_requests_always_reach_the_same_entity(con: duckdb.DuckDBPyConnection) -> None:
    with FakeServer(keep_bodies=True) as a, FakeServer(keep_bodies=True) as b:
        aifuncs.endpoints.create("ads", served_entities=[chat("a", a.url, 50), chat("b", b.url, 50)])
        # Deterministic: answers are kept; emptied between the runs, so the second asks every request again.
        query = "SELECT ai_query('ads', 'r' || i, modelParameters => {'temperature': 0}) FROM range(400) t(i)"
        aifuncs.sql(con, query).fetchall()
        assert aifuncs.cache.clear("ads") == 400
        aifuncs.sql(con, query).fetchall()
        seen = [{m["messages"][-1]["content"] for m in s.stats.bodies} for s in (a, b)]
        counts = [s.stats.requests for s in (a, b)]
    assert counts[0] + counts[1] == 800 and 320 < counts[0] < 480  # each distinct request once a run
    assert not seen[0] & seen[1] and len(seen[0] | seen[1]) == 400  # none went to both: its hash picks one


DEAD = Faults(server_error=1.0)  # every request answers HTTP 500


def test_a_dead_entity_falls_back_with_no_failed_row(con: duckdb.DuckDBPyConnection) -> None:
    with FakeServer(faults=DEAD) as dead, FakeServer() as backup:
        quick = {"max_retries": 1, "retry_base_s": 0.01, "max_concurrency": 16}
        aifuncs.endpoints.create(
            "ads",
            served_entities=[chat("prod", dead.url, 100, **quick), chat("backup", backup.url, 0, **quick)],
        )
        query = "SELECT ai_query('ads', 'r' || i, failOnError => false) FROM range(300) t(i)"
        without = aifuncs.sql(con, query).fetchall()  # fallback_config off: the dead entity's rows fail
        assert backup.stats.requests == 0
        assert all(r[0]["errorMessage"] and "HTTP 500" in r[0]["errorMessage"] for r in without)
        aifuncs.endpoints.put_ai_gateway("ads", {"fallback_config": {"enabled": True}})
        rows = aifuncs.sql(con, query.replace("failOnError => false", "failOnError => true")).fetchall()
        assert len(rows) == 300 and {r[0] for r in rows} == {f"echo: r{i}" for i in range(300)}  # 0 failed
        # retried once each without a fallback; with one, asked once: the fallback answers at once
        assert backup.stats.requests == 300 and dead.stats.requests == 2 * 300 + 300
    aifuncs.runtime.default_runtime().usage.flush()
    labels = con.execute(
        "SELECT served_entity, status, usage_context, count(*) FROM aifuncs_usage"
        " WHERE usage_context IS NOT NULL GROUP BY ALL"
    ).fetchall()
    assert labels == [("backup", "ok", '{"fallback_from": "prod"}', 300)], labels


def test_an_endpoint_falls_back_to_another_endpoint(con: duckdb.DuckDBPyConnection) -> None:
    with FakeServer(faults=DEAD) as dead, FakeServer() as other:
        aifuncs.endpoints.create(
            "primary", kind="openai", model="m", base_url=dead.url + "/v1"
        )  # its default retries (6, from 0.5 s) are not waited out: a fallback waits
        aifuncs.endpoints.create("backup", kind="openai", model="m", base_url=other.url + "/v1")
        aifuncs.endpoints.put_ai_gateway(
            "primary", {"fallback_config": {"enabled": True, "endpoint": "backup"}}
        )
        rows = aifuncs.sql(con, "SELECT ai_query('primary', 'r' || i) FROM range(50) t(i)").fetchall()
        assert sorted(r[0] for r in rows) == sorted(f"echo: r{i}" for i in range(50))
        assert other.stats.requests == 50 and dead.stats.requests == 50
    aifuncs.runtime.default_runtime().usage.flush()
    assert con.execute(
        "SELECT endpoint, status, count(*) FROM aifuncs_usage GROUP BY ALL ORDER BY 1"
    ).fetchall() == [("backup", "ok", 50), ("primary", "error", 50)]


def test_when_every_entity_fails_the_error_says_unavailable_not_bad_input() -> None:
    import pyarrow as pa
    import pytest

    from aifuncs.errors import ModelError, RemoteError
    from aifuncs.session import bind_call

    with FakeServer(faults=DEAD) as a, FakeServer(faults=DEAD) as b:
        aifuncs.endpoints.create(
            "ads", served_entities=[chat("a", a.url, 50, max_retries=0), chat("b", b.url, 50, max_retries=0)]
        )
        aifuncs.endpoints.put_ai_gateway("ads", {"fallback_config": {"enabled": True}})
        call = bind_call("ai_query", "ads", pa.string())
        with pytest.raises(ModelError) as raised:
            aifuncs.runtime.default_runtime().run_call(call, pa.array(["x", "y"]))
    cause = raised.value.__cause__
    assert isinstance(cause, RemoteError) and cause.retryable and cause.status == 500  # a REST caller's 503
    assert a.stats.requests == 2 and b.stats.requests == 2  # each row asked of both, once each


def test_an_open_connection_follows_a_config_switch_within_a_second(con: duckdb.DuckDBPyConnection) -> None:
    import time

    with FakeServer() as a, FakeServer() as b:
        aifuncs.endpoints.create("ads", served_entities=[chat("a", a.url, 100), chat("b", b.url, 0)])
        query = "SELECT ai_query('ads', 'r' || i) FROM range(20) t(i)"
        aifuncs.sql(con, query).fetchall()
        assert (a.stats.requests, b.stats.requests) == (20, 0)
        aifuncs.endpoints.update("ads", served_entities=[chat("a", a.url, 0), chat("b", b.url, 100)])
        switched = time.monotonic()
        while b.stats.requests == 0:  # the same connection, asked again: on the new config within a second
            aifuncs.sql(con, query).fetchall()
            assert time.monotonic() - switched < 1.5
        aifuncs.sql(con, query).fetchall()
        assert b.stats.requests >= 20 and a.stats.requests <= 40
