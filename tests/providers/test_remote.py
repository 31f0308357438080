"""Remote kinds (openai, anthropic, serving) against a protocol-faithful server on 127.0.0.1."""

from __future__ import annotations

import json
import time

import duckdb
import pytest
from servers import FakeServer, Faults, rows_of

import aifuncs
from aifuncs.errors import MissingSecret, ModelError
from aifuncs.providers import provider_class

KEY = "sk-test-DO-NOT-LEAK-4242"


@pytest.fixture
def prompts(con: duckdb.DuckDBPyConnection) -> duckdb.DuckDBPyConnection:
    con.execute("CREATE TABLE docs AS SELECT i AS id, 'doc number ' || i AS body FROM range(50) t(i)")
    return con


def test_openai_chat_answers_every_row_in_order_and_records_usage(prompts) -> None:  # type: ignore[no-untyped-def]
    with FakeServer(keep_bodies=True) as server:
        aifuncs.endpoints.create("llm", kind="openai", model="m", base_url=server.url + "/v1")
        rows = aifuncs.sql(
            prompts,
            "SELECT id, ai_query('llm', 'Summarize: ' || body, modelParameters => {'max_tokens': 16,"
            " 'temperature': 0.0}) AS answer FROM docs ORDER BY id",
        ).fetchall()
    assert rows == [(i, f"echo: Summarize: doc number {i}") for i in range(50)]
    assert server.stats.requests == 50
    assert all(b["max_tokens"] == 16 and b["temperature"] == 0.0 for b in server.stats.bodies)
    usage = prompts.sql(
        "SELECT count(*), sum(rows), sum(input_tokens), min(status), max(attempts) FROM aifuncs_usage"
        " WHERE endpoint = 'llm'"
    ).fetchall()
    assert usage == [(50, 50, 50 * 4, "ok", 1)]


def test_return_type_asks_for_a_json_schema_and_parses_the_reply(prompts) -> None:  # type: ignore[no-untyped-def]
    with FakeServer(keep_bodies=True) as server:
        aifuncs.endpoints.create("llm", kind="openai", model="m", base_url=server.url + "/v1")
        rel = aifuncs.sql(
            prompts,
            "SELECT ai_query('llm', body, returnType => 'STRUCT<echo: STRING, length: INT>') AS r"
            " FROM docs WHERE id < 3 ORDER BY id",
        )
        assert str(rel.types[0]) == "STRUCT(echo VARCHAR, length INTEGER)"
        assert rel.fetchall()[0] == ({"echo": "doc number 0", "length": 12},)
    schema = server.stats.bodies[0]["response_format"]["json_schema"]["schema"]
    assert schema["properties"] == {"echo": {"type": "string"}, "length": {"type": "integer"}}


def test_a_reply_that_does_not_parse_is_a_row_error_or_names_the_reply(prompts) -> None:  # type: ignore[no-untyped-def]
    with FakeServer() as server:
        aifuncs.endpoints.create("llm", kind="openai", model="m", base_url=server.url + "/v1")
        rows = aifuncs.sql(
            prompts,
            "SELECT ai_query('llm', body, returnType => 'INT', failOnError => false) AS r FROM docs WHERE id < 2",
        ).fetchall()
        assert rows[0][0]["result"] is None
        assert "does not parse as int32: 'echo: doc number" in rows[0][0]["errorMessage"]
        with pytest.raises(
            duckdb.Error, match=r"Endpoint 'llm' failed .*does not parse.*request 'doc number"
        ):
            aifuncs.sql(prompts, "SELECT ai_query('llm', body, returnType => 'INT') FROM docs").fetchall()


def test_embeddings_send_many_rows_per_request(prompts) -> None:  # type: ignore[no-untyped-def]
    with FakeServer() as server:
        aifuncs.endpoints.create(
            "embed",
            kind="openai",
            model="e",
            task="embeddings",
            base_url=server.url + "/v1",
            max_batch_rows=20,
        )
        rel = aifuncs.sql(prompts, "SELECT id, ai_query('embed', body) AS v FROM docs ORDER BY id")
        assert rel.types[1] == "FLOAT[]"
        rows = rel.fetchall()
    assert rows[3] == (3, [float(len("doc number 3")), 1.0])
    assert server.stats.requests == 3  # 50 rows, 20 per request


def test_anthropic_messages_with_the_key_from_the_environment(prompts, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    with FakeServer(keep_bodies=True) as server:
        aifuncs.endpoints.create(
            "claude",
            kind="anthropic",
            model="claude-x",
            base_url=server.url,
            api_key_env="TEST_ANTHROPIC_KEY",
        )
        with pytest.raises(duckdb.Error, match="TEST_ANTHROPIC_KEY, which is not set"):
            aifuncs.sql(prompts, "SELECT ai_query('claude', body) FROM docs").fetchall()
        monkeypatch.setenv("TEST_ANTHROPIC_KEY", KEY)
        rows = aifuncs.sql(
            prompts,
            "SELECT ai_query('claude', body, modelParameters => {'max_tokens': 8, 'stop': 'x'}) FROM docs"
            " WHERE id < 2 ORDER BY id",
        ).fetchall()
        typed = aifuncs.sql(
            prompts,
            "SELECT ai_query('claude', body, returnType => 'STRUCT<echo: STRING>') FROM docs WHERE id = 0",
        ).fetchall()
    assert rows == [("echo: doc number 0",), ("echo: doc number 1",)]
    assert typed == [({"echo": "doc number 0"},)]
    assert server.stats.auth == {KEY}
    body = server.stats.bodies[0]
    assert body["max_tokens"] == 8 and body["stop_sequences"] == ["x"] and body["model"] == "claude-x"


def test_keys_never_reach_the_catalog_errors_usage_or_repr(prompts, monkeypatch, capsys) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("TEST_OPENAI_KEY", KEY)
    with FakeServer(faults=Faults(server_error=1.0)) as server:
        endpoint = aifuncs.endpoints.create(
            "llm",
            kind="openai",
            model="m",
            base_url=server.url + "/v1",
            api_key_env="TEST_OPENAI_KEY",
            max_retries=1,
            retry_base_s=0.01,
        )
        with pytest.raises(duckdb.Error) as failure:
            aifuncs.sql(prompts, "SELECT ai_query('llm', body) FROM docs WHERE id = 0").fetchall()
        aifuncs.sql(
            prompts, "SELECT ai_query('llm', body, failOnError => false) FROM docs WHERE id < 3"
        ).fetchall()
    assert server.stats.auth == {f"Bearer {KEY}"}  # it was sent...
    usage = json.dumps(prompts.sql("SELECT * FROM aifuncs_usage").fetchall(), default=str)
    catalog = (aifuncs._home.home() / "catalog.db").read_bytes()
    provider = provider_class("openai")(endpoint)
    for text in (str(failure.value), usage, repr(provider), repr(endpoint), capsys.readouterr().out):
        assert KEY not in text  # ...and is nowhere else
    assert KEY.encode() not in catalog
    with pytest.raises(aifuncs.errors.ConfigError, match="api_key_env"):
        aifuncs.endpoints.create("bad", kind="openai", model="m", api_key=KEY)


def test_serving_kind_sends_dataframe_split_batches(con) -> None:  # type: ignore[no-untyped-def]
    with FakeServer(keep_bodies=True) as server:
        aifuncs.endpoints.create("churn", kind="serving", url=server.url + "/invocations", returns="DOUBLE")
        rows = aifuncs.sql(
            con,
            "SELECT ai_query('churn', struct_pack(x := i::DOUBLE, y := 1)) FROM range(600) t(i) ORDER BY i",
        ).fetchall()
    assert [r[0] for r in rows] == [2.0 * i for i in range(600)]
    assert server.stats.bodies[0]["dataframe_split"]["columns"] == ["x", "y"]
    assert server.stats.rows == 600 and server.stats.requests == 3  # 256 rows per request


def test_faults_are_retried_until_every_row_is_right(con) -> None:  # type: ignore[no-untyped-def]
    faults = Faults(rate_limit=0.1, server_error=0.1, slow=0.03, drop=0.05, malformed=0.05, slow_s=1.5)
    con.execute("CREATE TABLE items AS SELECT i AS id, 'item ' || i AS body FROM range(2000) t(i)")
    with FakeServer(faults=faults) as chat, FakeServer(faults=faults) as scoring:
        options = {"max_retries": 8, "retry_base_s": 0.01, "timeout_s": 1.0}
        aifuncs.endpoints.create("llm", kind="openai", model="m", base_url=chat.url + "/v1", **options)
        aifuncs.endpoints.create(
            "score",
            kind="serving",
            url=scoring.url + "/invocations",
            returns="BIGINT",
            max_batch_rows=32,
            **options,
        )
        started = time.monotonic()
        rows = aifuncs.sql(
            con, "SELECT id, ai_query('llm', body) AS a, ai_query('score', id) AS s FROM items ORDER BY id"
        ).fetchall()
        elapsed = time.monotonic() - started
    assert rows == [(i, f"echo: item {i}", 2 * i) for i in range(2000)]
    for server, requests in ((chat, 2000), (scoring, 63)):
        faults = sum(server.stats.faults.values())
        assert faults > 0  # faults did happen...
        # ...each retried once, and a few stalled requests sent again before they failed (hedged)
        assert requests + faults <= server.stats.requests <= requests + faults + requests // 20
    assert elapsed < 150  # bounded: every retry waits at most its backoff or a 1 s timeout
    attempts = con.sql("SELECT max(attempts), count(*) FILTER (attempts > 1) FROM aifuncs_usage").fetchall()[
        0
    ]
    assert 1 < attempts[0] <= 9 and attempts[1] > 0


def test_retries_stop_at_the_bound_and_failures_stay_per_row(prompts) -> None:  # type: ignore[no-untyped-def]
    with FakeServer(faults=Faults(server_error=1.0)) as server:
        aifuncs.endpoints.create(
            "down", kind="openai", model="m", base_url=server.url + "/v1", max_retries=2, retry_base_s=0.01
        )
        rows = aifuncs.sql(
            prompts, "SELECT ai_query('down', body, failOnError => false) AS r FROM docs WHERE id < 4"
        ).fetchall()
        assert server.stats.requests == 4 * 3  # first try and two retries per row, no more
        assert all("answered HTTP 500" in r[0]["errorMessage"] for r in rows)
        with pytest.raises(ModelError, match="Endpoint 'down' failed on a batch of 1 rows: .*HTTP 500"):
            raise_model_error(prompts)


def raise_model_error(con: duckdb.DuckDBPyConnection) -> None:
    from aifuncs.runtime import default_runtime

    call = aifuncs.planner.bind_call("ai_query", "down", None)
    import pyarrow as pa

    default_runtime().run_call(call, pa.array(["x"]))


def test_missing_secret_is_a_config_error_naming_the_variable() -> None:
    endpoint = aifuncs.endpoints.create("k", kind="openai", model="m", api_key_env="NOT_SET_ANYWHERE")
    with pytest.raises(MissingSecret, match="NOT_SET_ANYWHERE"):
        provider_class("openai")(endpoint).api_key()


def test_in_flight_requests_back_off_when_the_server_starts_queueing(con) -> None:  # type: ignore[no-untyped-def]
    # The server works on 4 requests at a time; the endpoint allows 32. Without backing off, every request
    # would wait behind 28 others (latency x8); the limit must come down to what the server keeps up with.
    with FakeServer(delay_s=0.02, capacity=4) as server:
        aifuncs.endpoints.create(
            "queued",
            kind="serving",
            url=server.url + "/invocations",
            returns="BIGINT",
            max_batch_rows=8,
            max_concurrency=32,
        )
        rows = aifuncs.sql(con, "SELECT i, ai_query('queued', i) FROM range(3000) t(i) ORDER BY i").fetchall()
        arrivals = server.stats.arrivals_in_flight
    assert rows == [(i, 2 * i) for i in range(3000)]
    assert max(arrivals) >= 24  # it started at the endpoint's maximum...
    late = arrivals[-100:]
    assert sum(late) / len(late) < 16  # ...and settled well below it


def test_a_413_halves_the_rows_per_request_and_the_endpoint_remembers(con) -> None:  # type: ignore[no-untyped-def]
    with FakeServer(faults=Faults(max_rows=100), keep_bodies=True) as server:
        aifuncs.endpoints.create(
            "scorer", kind="serving", url=server.url + "/invocations", returns="BIGINT", max_batch_rows=256
        )
        query = "SELECT ai_query('scorer', i, failOnError => true) FROM range(1000) t(i) ORDER BY i"
        assert [r[0] for r in aifuncs.sql(con, query).fetchall()] == [2 * i for i in range(1000)]
        assert server.stats.faults["too_large"] >= 2  # 256 rows, then 128, were refused
        sizes = [rows_of(b) for b in server.stats.bodies]
        before = len(sizes)
        again = "SELECT ai_query('scorer', i + 1000) FROM range(500) t(i)"
        assert len(aifuncs.sql(con, again).fetchall()) == 500
        later = [rows_of(b) or 0 for b in server.stats.bodies[before:]]
    assert (
        max(s or 0 for s in sizes) == 256 and max(later) <= 64 and sum(later) == 500
    )  # remembered: no 413 the second time


def test_a_stalled_request_is_hedged_and_answered_long_before_the_stall_ends(con) -> None:  # type: ignore[no-untyped-def]
    faults = Faults(slow=0.05, slow_s=20.0, first_attempts_only=True)
    con.execute("CREATE TABLE items AS SELECT i AS id, 'item ' || i AS body FROM range(400) t(i)")
    with FakeServer(delay_s=0.01, faults=faults) as server:
        aifuncs.endpoints.create("llm", kind="openai", model="m", base_url=server.url + "/v1", timeout_s=60)
        started = time.monotonic()
        query = (
            "SELECT id, ai_query('llm', body, modelParameters => {'temperature': 0}) FROM items ORDER BY id"
        )
        rows = aifuncs.sql(con, query).fetchall()  # temperature 0: any reply to a request is its answer
        elapsed = time.monotonic() - started
        stalls = server.stats.faults["slow"]
    assert rows == [(i, f"echo: item {i}") for i in range(400)]
    assert stalls > 5 and elapsed < 15  # each stall would hold its row for 20 s


def test_a_stalled_request_that_may_not_be_hedged_waits_without_spinning(con, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from aifuncs.runtime._limit import AdaptiveLimit

    monkeypatch.setattr(AdaptiveLimit, "may_hedge", lambda self: False)  # the hedging share is used up
    faults = Faults(slow=0.1, slow_s=3.0, first_attempts_only=True, seed=3)
    with FakeServer(delay_s=0.01, faults=faults) as server:
        aifuncs.endpoints.create(
            "llm", kind="openai", model="m", base_url=server.url + "/v1", max_concurrency=4
        )
        query = (
            "SELECT ai_query('llm', 'item ' || i, modelParameters => {'temperature': 0}) FROM range(60) t(i)"
        )
        cpu, wall = time.process_time(), time.monotonic()
        assert len(aifuncs.sql(con, query).fetchall()) == 60
        cpu, wall = time.process_time() - cpu, time.monotonic() - wall
        assert server.stats.faults["slow"] > 0
    assert wall >= 3.0 and cpu < wall / 2  # the stalls were waited out, not polled
