"""The same SQL, functions and runtime on Apache Spark (a real `local[2]` session, one for every test here).

Each query runs on Spark and on DuckDB and must give the same rows; the job's limits, usage rows and the
principal's permissions must hold for the whole job, across Spark's two Python workers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pytest
from planner.test_databricks import CASES
from servers import FakeServer

import aifuncs
import aifuncs.governance as gov
import aifuncs.spark
from aifuncs._types import duckdb_ddl
from aifuncs.engines.spark import failure_of
from aifuncs.errors import ArgumentError, PermissionDenied

pytestmark = pytest.mark.timeout(600)


def spark_types(frame: Any) -> list[str]:
    from pyspark.sql.pandas.types import to_arrow_type

    return [duckdb_ddl(to_arrow_type(f.dataType, timezone="UTC")) for f in frame.schema.fields]


def rows_of(table: pa.Table) -> list[str]:
    """Rows as comparable texts, in order (DuckDB and Spark name a struct's parts alike)."""
    return [json.dumps(list(r.values()), default=str) for r in table.to_pylist()]


@pytest.fixture(scope="module")
def server() -> Iterator[FakeServer]:
    with FakeServer(keep_bodies=False) as fake:
        yield fake


@pytest.fixture
def reviews(spark: Any, con: duckdb.DuckDBPyConnection, server: FakeServer) -> duckdb.DuckDBPyConnection:
    """The conformance suite's table on both engines, and its endpoints (openai chat, a serving scorer)."""
    con.execute(
        "CREATE TABLE reviews AS SELECT i AS id, 'review ' || i AS text, (i * 1.5)::DECIMAL(6,2) AS price,"
        " DATE '2026-11-01' + i::INT AS day FROM range(4) t(i)"
    )
    spark.createDataFrame(con.sql("FROM reviews").to_arrow_table()).createOrReplaceTempView("reviews")
    aifuncs.endpoints.create("llm", kind="openai", model="m", base_url=server.url + "/v1")
    aifuncs.endpoints.create("scorer", kind="serving", url=server.url + "/invocations", returns="DOUBLE")
    aifuncs.endpoints.create("crm", kind="http", base_url=server.url)
    return con


# Engine built-ins that answer in other types (Spark's length() is INT, DuckDB's BIGINT).
SPARK_TYPES = {"SELECT length(ai_query": ["INTEGER", "BIGINT"]}


@pytest.mark.parametrize(("query", "types"), CASES, ids=[f"case{i}" for i in range(len(CASES))])
def test_databricks_queries_give_the_same_rows_on_spark_as_on_duckdb(
    spark: Any, reviews: duckdb.DuckDBPyConnection, query: str, types: list[str]
) -> None:
    on_duckdb = aifuncs.sql(reviews, query, dialect="databricks")
    assert on_duckdb is not None
    on_spark = aifuncs.spark.sql(spark, query)
    assert on_spark is not None
    expected = next((t for prefix, t in SPARK_TYPES.items() if query.startswith(prefix)), types)
    assert spark_types(on_spark) == expected
    duckdb_rows, spark_rows = rows_of(on_duckdb.to_arrow_table()), rows_of(on_spark.toArrow())
    if "ORDER BY" not in query:
        duckdb_rows, spark_rows = sorted(duckdb_rows), sorted(spark_rows)
    if "LIMIT" in query:  # which rows a LIMIT keeps is the engine's choice
        assert len(spark_rows) == len(duckdb_rows) == 2 and set(spark_rows) <= set(
            rows_of(
                aifuncs.sql(reviews, query.replace(" LIMIT 2", ""), dialect="databricks").to_arrow_table()
            )
        )
    else:
        assert spark_rows == duckdb_rows and spark_rows


def test_mlflow_model_and_python_function_answer_as_on_duckdb(
    spark: Any, con: duckdb.DuckDBPyConnection, mlflow_models: Any
) -> None:
    from sklearn.datasets import load_wine

    aifuncs.endpoints.create(
        "wine", kind="mlflow", model_uri=mlflow_models.sklearn_uri, tracking_uri=mlflow_models.tracking_uri
    )
    aifuncs.endpoints.create("doubler", kind="python", function="sample_models:doubled", returns="DOUBLE")
    wines = pa.Table.from_pandas(load_wine(as_frame=True).frame.reset_index(names="id"), preserve_index=False)
    con.register("wines", wines)
    spark.createDataFrame(wines).createOrReplaceTempView("wines")
    query = (
        "SELECT id, ai_query('wine', named_struct('alcohol', alcohol, 'malic_acid', malic_acid, 'flavanoids',"
        " flavanoids, 'color_intensity', color_intensity, 'proline', proline)) AS label,"
        " ai_query('doubler', proline) AS twice FROM wines ORDER BY id"
    )
    on_spark = aifuncs.spark.sql(spark, query).toArrow()
    on_duckdb = aifuncs.sql(con, query, dialect="databricks").to_arrow_table()
    assert on_spark.num_rows == 178
    assert rows_of(on_spark) == rows_of(on_duckdb)
    assert on_spark.column("twice").to_pylist() == [2 * p for p in wines.column("proline").to_pylist()]
    assert set(on_spark.column("label").to_pylist()) == {0, 1, 2}  # the model ran: all three classes


def test_failures_stay_per_row_and_a_failing_call_names_its_endpoint(
    spark: Any, con: duckdb.DuckDBPyConnection
) -> None:
    aifuncs.endpoints.create(
        "flaky", kind="python", function="sample_models:fails_on_13", returns="DOUBLE", max_batch_rows=10
    )
    spark.range(40).createOrReplaceTempView("numbers")
    rows = aifuncs.spark.sql(
        spark,
        "SELECT id, ai_query('flaky', CAST(id AS DOUBLE), failOnError => false) AS r FROM numbers ORDER BY id",
    ).collect()
    failed = [r.id for r in rows if r.r.errorMessage is not None]
    assert failed == [13]  # one row fails alone, though its batch of 10 was refused
    assert "13 is unlucky" in rows[13].r.errorMessage and rows[13].r.result is None
    assert [r.r.result for r in rows if r.id != 13] == [i * 10.0 for i in range(40) if i != 13]
    with pytest.raises(Exception, match="flaky") as failure:
        aifuncs.spark.sql(spark, "SELECT ai_query('flaky', CAST(id AS DOUBLE)) FROM numbers").collect()
    assert "13 is unlucky" in str(failure.value)


def test_usage_rows_from_the_workers_reach_the_usage_log(
    spark: Any, con: duckdb.DuckDBPyConnection, server: FakeServer
) -> None:
    aifuncs.endpoints.create(
        "scorer", kind="serving", url=server.url + "/invocations", returns="DOUBLE", max_batch_rows=25
    )
    spark.range(500).createOrReplaceTempView("numbers")
    before = server.stats.requests
    answers = aifuncs.spark.sql(
        spark,
        "SELECT ai_query('scorer', named_struct('x', id), cache => false) AS s FROM numbers",
        usage_context={"team": "growth"},
        client_request_id="nightly-7",
    ).collect()
    assert sorted(r.s for r in answers) == [2.0 * i for i in range(500)]
    sent = server.stats.requests - before
    assert sent >= 20  # 500 rows in requests of at most 25
    usage = con.sql(
        "SELECT count(*), sum(rows), min(requester), min(origin), min(client_request_id), min(usage_context)"
        " FROM aifuncs_usage WHERE endpoint = 'scorer'"
    ).fetchall()
    assert usage == [(sent, 500, gov.whoami().name, "sql", "nightly-7", '{"team": "growth"}')]


def test_an_endpoints_limits_hold_for_the_whole_job(spark: Any, con: duckdb.DuckDBPyConnection) -> None:
    with FakeServer(delay_s=0.05) as slow:
        aifuncs.endpoints.create(
            "scorer", kind="serving", url=slow.url + "/invocations", returns="DOUBLE", max_batch_rows=4,
            max_concurrency=4,
        )  # fmt: skip
        spark.range(400).createOrReplaceTempView("numbers")
        query = "SELECT ai_query('scorer', named_struct('x', id), cache => false) AS s FROM numbers"
        assert len(aifuncs.spark.sql(spark, query).collect()) == 400
        seen = slow.stats
    assert seen.requests == 100
    assert 2 <= seen.max_in_flight <= 4  # both workers sent, and together never more than the endpoint's 4
    # A rate limit of 10 calls a second (burst 2) is one bucket for both workers: 80 one-row requests take
    # at least 7.8 s together, where a bucket per worker would let them through in 3.8 s.
    aifuncs.endpoints.create(
        "doubler", kind="python", function="sample_models:doubled", returns="DOUBLE", max_batch_rows=1
    )
    aifuncs.endpoints.set_rate_limits("doubler", [{"calls": 600, "key": "endpoint", "burst": 2}])
    spark.range(80).createOrReplaceTempView("few")
    began = time.monotonic()
    rows = aifuncs.spark.sql(spark, "SELECT ai_query('doubler', CAST(id AS DOUBLE), cache => false) FROM few")
    assert len(rows.collect()) == 80
    assert time.monotonic() - began >= 7.8 * 0.97
    assert con.sql("SELECT count(*) FROM aifuncs_usage WHERE endpoint = 'doubler'").fetchall() == [(80,)]


def test_the_principal_is_checked_before_any_task_starts(
    spark: Any, home: Path, monkeypatch: pytest.MonkeyPatch, server: FakeServer
) -> None:
    monkeypatch.delenv("AIFUNCS_TOKEN", raising=False)
    gov.create_user("bob")
    aifuncs.endpoints.create("scorer", kind="serving", url=server.url + "/invocations", returns="DOUBLE")
    aifuncs.endpoints.update_permissions("scorer", [{"user_name": "bob", "permission_level": "CAN_VIEW"}])
    spark.range(10).createOrReplaceTempView("numbers")
    before = server.stats.requests
    with pytest.raises(PermissionDenied, match="'bob' may not query endpoint 'scorer'"):
        aifuncs.spark.sql(
            spark,
            "SELECT ai_query('scorer', named_struct('x', id)) FROM numbers",
            token=gov.create_token("bob"),
        )
    assert server.stats.requests == before


def test_what_spark_cannot_do_is_said_plainly(spark: Any) -> None:
    with pytest.raises(ArgumentError, match="takes a SparkSession first"):
        aifuncs.spark.sql("not a session", "SELECT 1")  # type: ignore[arg-type]
    aifuncs.endpoints.create("doubler", kind="python", function="sample_models:doubled", returns="DOUBLE")
    with pytest.raises(ArgumentError, match="vector_search is not available on Spark"):
        aifuncs.spark.sql(
            spark, "SELECT * FROM vector_search(index => 'docs', query => 'x', num_results => 3)"
        )
    with pytest.raises(ArgumentError, match="workers is the number"):
        aifuncs.spark.sql(spark, "SELECT 1", workers=0)


def test_json_paths_on_text_and_variant_read_as_databricks_means_them(spark: Any) -> None:
    aifuncs.endpoints.create("doubler", kind="python", function="sample_models:doubled", returns="DOUBLE")
    row = aifuncs.spark.sql(
        spark,
        """SELECT ai_query('doubler', j:a.b::double) AS twice, variant_get(parse_json(j), '$.a.b', 'int') AS v
           FROM VALUES ('{"a": {"b": 21}}') AS t(j)""",
    ).collect()
    assert [tuple(r) for r in row] == [(42.0, 21)]


def test_task_functions_on_the_offline_models(spark: Any, con: duckdb.DuckDBPyConnection) -> None:
    texts = ["I was charged twice this month", "The app crashes when I upload a photo", "Thanks, all good"]
    con.execute("CREATE TABLE tickets AS SELECT * FROM (VALUES (1, ?), (2, ?), (3, ?)) t(id, body)", texts)
    spark.createDataFrame(con.sql("FROM tickets").to_arrow_table()).createOrReplaceTempView("tickets")
    query = (
        "SELECT id, ai_classify(body, array('billing', 'bug', 'praise')) AS topic,"
        " ai_similarity(body, 'a refund for a double charge') AS near FROM tickets ORDER BY id"
    )
    on_spark = aifuncs.spark.sql(spark, query).toArrow()
    on_duckdb = aifuncs.sql(con, query, dialect="databricks").to_arrow_table()
    assert on_spark.column("topic").to_pylist() == on_duckdb.column("topic").to_pylist()
    assert on_spark.column("topic").to_pylist()[:2] == ["billing", "bug"]
    assert on_spark.column("near").to_pylist() == pytest.approx(
        on_duckdb.column("near").to_pylist(), abs=1e-5
    )
    near = on_spark.column("near").to_pylist()
    assert near[0] == max(near)  # the double charge is nearest the refund


CONNECT_SCRIPT = textwrap.dedent(
    """
    import json, sys, warnings
    from pyspark.sql import SparkSession
    import aifuncs, aifuncs.spark
    warnings.simplefilter("ignore", FutureWarning)  # pyspark on pandas 3, in its own start-up
    spark = SparkSession.builder.remote("local[2]").getOrCreate()
    aifuncs.endpoints.create("doubler", kind="python", function="sample_models:doubled", returns="DOUBLE")
    rows = aifuncs.spark.sql(spark, "SELECT id, ai_query('doubler', CAST(id AS DOUBLE)) AS twice"
                                    " FROM range(1000)").collect()
    twice = [r.twice for r in sorted(rows, key=lambda r: r.id)]
    print(json.dumps({"twice": twice, "workers": aifuncs.spark.workers_of(spark)}))
    spark.stop()
    """
)


def test_a_spark_connect_session(home: Path) -> None:
    """Spark Connect (what Databricks Connect and shared clusters speak) has no sparkContext: the engine
    uses only SQL and UDF registration. Its own process: a Connect session cannot share one with the
    classic session of the other tests."""
    tests = str(Path(__file__).parents[1])
    env = {**os.environ, "PYTHONPATH": tests, "PYSPARK_PYTHON": sys.executable}
    done = subprocess.run(
        [sys.executable, "-c", CONNECT_SCRIPT], env=env, capture_output=True, text=True, timeout=240
    )
    assert done.returncode == 0, done.stderr[-3000:]
    answer = json.loads(done.stdout.strip().splitlines()[-1])
    assert answer == {"twice": [2.0 * i for i in range(1000)], "workers": 2}
    usage = aifuncs.connect().sql("SELECT sum(rows) FROM aifuncs_usage WHERE endpoint = 'doubler'").fetchall()
    assert usage == [(1000,)]


def test_a_scheduled_job_runs_on_spark(
    spark: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import pyarrow.parquet as pq

    from aifuncs import jobs
    from aifuncs.cli import main
    from aifuncs.errors import AifuncsError

    aifuncs.endpoints.create("doubler", kind="python", function="sample_models:doubled", returns="DOUBLE")
    aifuncs.endpoints.create("flaky", kind="python", function="sample_models:fails_on_13", returns="DOUBLE")
    job = tmp_path / "nightly.sql"
    job.write_text(
        "CREATE OR REPLACE TEMP VIEW numbers AS SELECT id FROM range(50);\n"
        "SELECT id, ai_query('doubler', CAST(id AS DOUBLE)) AS twice FROM numbers WHERE id >= :low;\n"
    )
    out = tmp_path / "twice.parquet"
    result = jobs.run(job, engine="spark", dialect="databricks", params={"low": "10"}, output=str(out))
    assert (result.exit_code, result.output_rows, result.rows, result.failed_rows) == (0, 40, 40, 0)
    assert result.requests >= 1  # read back from the usage its workers logged, labelled with the run
    assert sorted(pq.read_table(out).column("twice").to_pylist()) == [2.0 * i for i in range(10, 50)]
    assert jobs.get_run(result.run_id)["rows"] == 40  # type: ignore[index]

    failing = tmp_path / "failing.sql"
    failing.write_text("SELECT ai_query('flaky', CAST(id AS DOUBLE)) FROM range(20)")
    failed = jobs.run(failing, engine="spark", dialect="databricks")
    assert failed.exit_code == jobs.Exit.ERROR and failed.error is not None
    assert "13 is unlucky" in failed.error and "Traceback" not in failed.error  # the worker's message alone
    missing = tmp_path / "missing.sql"
    missing.write_text("SELECT ai_query('doubler', CAST(x AS DOUBLE)) FROM no_such_table")
    assert jobs.run(missing, engine="spark", dialect="databricks").exit_code == jobs.Exit.BAD_SQL
    with pytest.raises(AifuncsError, match="Budgets .* are not available on Spark"):
        jobs.run(job, engine="spark", max_requests=5)

    # the command line: the same job, rows as JSON events
    assert (
        main(["run", str(job), "--engine", "spark", "--dialect", "databricks", "-p", "low=45", "--json"]) == 0
    )
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["event"] == "summary" and summary["output_rows"] == 5 and summary["rows"] == 5


def test_repeated_requests_are_asked_once_and_kept_for_the_next_job(
    spark: Any, con: duckdb.DuckDBPyConnection, server: FakeServer
) -> None:
    aifuncs.endpoints.create(
        "scorer", kind="serving", url=server.url + "/invocations", returns="DOUBLE", max_batch_rows=1
    )
    spark.range(1000).createOrReplaceTempView("numbers")
    query = "SELECT ai_query('scorer', named_struct('x', id % 10), cache => true) AS s FROM numbers"
    before = server.stats.requests
    first = aifuncs.spark.sql(spark, query).collect()
    sent = server.stats.requests - before
    assert sorted({r.s for r in first}) == [2.0 * i for i in range(10)]
    assert 10 <= sent <= 20  # each worker asks its distinct requests once (both may ask one at once)
    again = aifuncs.spark.sql(spark, query).collect()
    assert len(again) == 1000 and server.stats.requests - before == sent  # kept: nothing asked again


def test_an_api_key_reaches_the_workers_through_their_environment_only(
    spark: Any, monkeypatch: pytest.MonkeyPatch, server: FakeServer
) -> None:
    import cloudpickle

    from aifuncs.engines.spark import _answers
    from aifuncs.planner import bind_call

    monkeypatch.setenv("CRM_LLM_KEY", "sk-very-secret-4242")
    aifuncs.endpoints.create(
        "llm", kind="openai", model="m", base_url=server.url + "/v1", api_key_env="CRM_LLM_KEY"
    )
    # This session's workers started before the key was set: they say where a key must be, and no key rides
    # along with the query to make it work.
    with pytest.raises(
        Exception, match="needs an API key in the environment variable CRM_LLM_KEY"
    ) as missing:
        aifuncs.spark.sql(spark, "SELECT ai_query('llm', 'hi') AS a").collect()
    assert "spark.executorEnv" in str(missing.value)
    shipped = cloudpickle.dumps(_answers(bind_call("ai_query", "llm", pa.string()), False, None))
    assert b"CRM_LLM_KEY" in shipped and b"sk-very-secret-4242" not in shipped


def test_ai_forecast_gives_the_same_rows_on_spark(spark: Any, con: duckdb.DuckDBPyConnection) -> None:
    con.execute(
        "CREATE TABLE sales AS SELECT DATE '2026-01-01' + i::INT AS day, s AS store,"
        " 100 + 20 * s + 8 * sin(2 * pi() * i / 7) + 0.2 * i AS revenue FROM range(70) t(i), range(2) u(s)"
        " UNION ALL SELECT DATE '2026-03-01', 9, 5.0"
    )
    spark.createDataFrame(con.sql("FROM sales").to_arrow_table()).createOrReplaceTempView("sales")
    query = (
        "SELECT * FROM ai_forecast(TABLE(sales), horizon => '2026-03-20', time_col => 'day',"
        " value_col => 'revenue', group_col => 'store', frequency => 'D') ORDER BY store, day"
    )
    on_duckdb = aifuncs.sql(con, query, dialect="databricks").to_arrow_table()
    on_spark = aifuncs.spark.sql(spark, query).toArrow()
    assert on_spark.column_names == on_duckdb.column_names
    # 8 days per store (the horizon itself is not forecast); store 9 says why not
    assert on_spark.num_rows == on_duckdb.num_rows == 2 * 8 + 1
    assert on_spark.column("day").to_pylist() == on_duckdb.column("day").to_pylist()
    assert on_spark.column("error_message").to_pylist() == on_duckdb.column("error_message").to_pylist()
    spark_values, duckdb_values = (t.column("revenue_forecast").to_pylist() for t in (on_spark, on_duckdb))
    assert spark_values[-1] is None and duckdb_values[-1] is None
    assert spark_values[:-1] == pytest.approx(duckdb_values[:-1], rel=1e-6)


def test_the_workers_take_their_limits_from_the_shared_database(
    spark: Any, home: Path, pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The workers started before this test set the database: they see it only if it travels with the call.
    monkeypatch.setenv("AIFUNCS_DATABASE_URL", pg_url)
    aifuncs.endpoints.create(
        "doubler", kind="python", function="sample_models:doubled", returns="DOUBLE", max_batch_rows=1
    )
    aifuncs.endpoints.set_rate_limits("doubler", [{"calls": 1, "key": "endpoint"}])
    one = "SELECT ai_query('doubler', 1.0::DOUBLE, cache => false)"
    assert aifuncs.sql(aifuncs.connect(), one, wait_for_limits=False).fetchall() == [(2.0,)]  # spent here
    spark.range(1).createOrReplaceTempView("one_row")
    query = "SELECT ai_query('doubler', CAST(id AS DOUBLE), cache => false) AS d FROM one_row"
    password = pg_url.split(":")[2].split("@")[0]
    # The driver's process spent the minute's one call: a worker (whose home's own bucket is fresh) is refused.
    with pytest.raises(Exception) as refused:
        aifuncs.spark.sql(spark, query, wait_for_limits=False).collect()
    assert "rate limited (the endpoint's 1 calls/min)" in str(failure_of(refused.value))
    # Named explicitly, with the environment's unset: the driver plans against it and the workers share it.
    monkeypatch.delenv("AIFUNCS_DATABASE_URL")
    with pytest.raises(Exception) as named:
        aifuncs.spark.sql(spark, query, wait_for_limits=False, database_url=pg_url).collect()
    assert "rate limited (the endpoint's 1 calls/min)" in str(failure_of(named.value))
    assert password not in str(refused.value) + str(named.value)
    import psycopg

    with psycopg.connect(pg_url) as conn:
        assert conn.execute("SELECT count(*) FROM limit_buckets").fetchone() == (1,)  # one bucket, the job's
