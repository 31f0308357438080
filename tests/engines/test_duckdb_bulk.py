"""The bulk path: in-process models scored in big calls where that sees exactly the rows streaming would."""

from __future__ import annotations

import dataclasses
import re

import duckdb
import pytest
import sample_models

import aifuncs
from aifuncs.errors import ModelError
from aifuncs.planner import Prescore, rewrite
from aifuncs.planner._bulk import BULK_PREFIX

ROWS = 10_000  # several DuckDB vectors: streaming would call the model at least 5 times


@pytest.fixture
def numbers(con: duckdb.DuckDBPyConnection) -> duckdb.DuckDBPyConnection:
    aifuncs.endpoints.create("doubler", kind="python", function="sample_models:doubled", returns="DOUBLE")
    aifuncs.endpoints.create("flaky", kind="python", function="sample_models:fails_on_13", returns="DOUBLE")
    con.execute(f"CREATE TABLE numbers AS SELECT i AS id, i::DOUBLE AS x FROM range({ROWS}) t(i)")
    sample_models.CALLS.clear()
    return con


def _prescores(con: duckdb.DuckDBPyConnection, query: str) -> list[Prescore]:
    from aifuncs.engines.duckdb import _hooks

    return [p for planned in rewrite(query, "duckdb", _hooks(con)) for p in planned.prescores]


def test_a_scoring_query_calls_the_model_once_for_the_whole_table(numbers) -> None:  # type: ignore[no-untyped-def]
    rows = aifuncs.sql(numbers, "SELECT id, ai_query('doubler', x) AS y FROM numbers").fetchall()
    assert sample_models.CALLS == [ROWS]
    assert len(rows) == ROWS and all(y == 2 * i for i, y in rows)


def test_where_filters_rows_before_they_are_scored_and_answers_stay_aligned(numbers) -> None:  # type: ignore[no-untyped-def]
    numbers.execute("DELETE FROM numbers WHERE id % 7 = 3")  # holes in the table's row ids
    rows = aifuncs.sql(
        numbers, "SELECT id, ai_query('doubler', x) AS y FROM numbers WHERE id % 2 = 0 ORDER BY id DESC"
    ).fetchall()
    expected = [i for i in range(ROWS) if i % 2 == 0 and i % 7 != 3]
    assert sample_models.CALLS == [len(expected)]
    assert [i for i, _ in rows] == sorted(expected, reverse=True)
    assert all(y == 2 * i for i, y in rows)


def test_select_star_create_table_as_and_insert(numbers) -> None:  # type: ignore[no-untyped-def]
    rel = aifuncs.sql(numbers, "SELECT *, ai_query('doubler', x) AS y FROM numbers n WHERE n.id < 5")
    assert rel.columns == ["id", "x", "y"]
    aifuncs.sql(numbers, "CREATE TABLE scored AS SELECT id, ai_query('doubler', x) AS y FROM numbers")
    aifuncs.sql(numbers, "INSERT INTO scored SELECT id + 1000000, ai_query('doubler', x) FROM numbers")
    total = numbers.sql("SELECT count(*), sum(y) FROM scored").fetchall()[0]
    assert total == (2 * ROWS, 2 * sum(2 * i for i in range(ROWS)))
    assert sample_models.CALLS == [5, ROWS, ROWS]
    tables = numbers.sql("SELECT count(*) FROM duckdb_views() WHERE view_name LIKE '__aifuncs_bulk%'")
    assert tables.fetchall() == [(0,)]  # the scores were unregistered


def test_two_calls_in_one_select_share_one_scan(numbers) -> None:  # type: ignore[no-untyped-def]
    query = (
        "SELECT id, ai_query('doubler', x) AS a, ai_query('flaky', x + 20, failOnError => false) AS b"
        " FROM numbers WHERE id < 100"
    )
    [prescore] = _prescores(numbers, query)
    assert prescore.name.startswith(BULK_PREFIX) and len(prescore.calls) == 2
    rows = aifuncs.sql(numbers, query + " ORDER BY id").fetchall()
    assert rows[0] == (0, 0.0, {"result": 200.0, "errorMessage": None})
    assert rows[13] == (13, 26.0, {"result": 330.0, "errorMessage": None})
    assert all(b["errorMessage"] is None for _, _, b in rows)


def test_per_row_errors_and_fail_on_error_on_the_bulk_path(numbers) -> None:  # type: ignore[no-untyped-def]
    rows = aifuncs.sql(
        numbers, "SELECT id, ai_query('flaky', x, failOnError => false) AS r FROM numbers WHERE id < 20"
    ).fetchall()
    by_id = dict(rows)
    assert by_id[13] == {"result": None, "errorMessage": "ValueError: 13 is unlucky"}
    assert by_id[12] == {"result": 120.0, "errorMessage": None}
    with pytest.raises(
        duckdb.Error, match="Endpoint 'flaky' failed on a batch of 20 rows: ValueError: 13"
    ) as e:
        aifuncs.sql(numbers, "SELECT ai_query('flaky', x) FROM numbers WHERE id < 20")
    assert isinstance(e.value.__cause__, ModelError)  # the typed error, for Python callers


def test_a_failure_part_way_leaves_the_connection_usable(numbers) -> None:  # type: ignore[no-untyped-def]
    aifuncs.endpoints.update("flaky", max_batch_rows=100)  # 100 steps: the failure comes with rows unread
    with pytest.raises(duckdb.Error, match="13 is unlucky"):
        aifuncs.sql(numbers, "SELECT ai_query('flaky', x) FROM numbers")
    rel = aifuncs.sql(numbers, "SELECT ai_query('doubler', x) FROM numbers WHERE id = 4")
    assert rel.fetchall() == [(8.0,)]


@pytest.mark.parametrize(
    "query",
    [
        "SELECT ai_query('doubler', x) FROM numbers LIMIT 10",
        "SELECT id, ai_query('doubler', x) AS y FROM numbers ORDER BY id LIMIT 10",
        "SELECT * FROM numbers WHERE ai_query('doubler', x) > 10 LIMIT 10",
        "SELECT * FROM (SELECT id, ai_query('doubler', x) AS y FROM numbers) WHERE id < 10",
        "SELECT * FROM (SELECT id, ai_query('doubler', x) AS y FROM numbers) LIMIT 10",
        "WITH s AS (SELECT id, ai_query('doubler', x) AS y FROM numbers) SELECT * FROM s WHERE id < 10",
        "SELECT CASE WHEN id < 10 THEN ai_query('doubler', x) END FROM numbers",
        "SELECT coalesce(NULL, ai_query('doubler', x)) FROM numbers WHERE id < 10",
        "SELECT ai_query('doubler', x) FROM numbers WHERE random() < 0.5",
        "SELECT ai_query('doubler', x) FROM numbers USING SAMPLE 10",
        "SELECT ai_query('doubler', n.x, cache => false) FROM numbers n JOIN numbers m ON n.id = m.id",
        "SELECT ai_query('doubler', x, cache => false) FROM numbers_view",
        "SELECT id % 2, ai_query('doubler', (id % 2)::DOUBLE) FROM numbers GROUP BY id % 2",
        "SELECT id FROM numbers WHERE id < 3 OR ai_query('doubler', x) > 10",
        "SELECT id, (SELECT ai_query('doubler', x) FROM numbers m WHERE m.id = n.id) FROM numbers n",
        "SELECT * FROM (SELECT ai_query('doubler', x) FROM numbers_view LIMIT 10)",
    ],
)
def test_queries_that_could_score_fewer_rows_stream(numbers, query: str) -> None:  # type: ignore[no-untyped-def]
    numbers.execute("CREATE VIEW numbers_view AS SELECT * FROM numbers")
    assert _prescores(numbers, query) == []
    aifuncs.sql(numbers, query).fetchall()
    assert sample_models.CALLS and max(sample_models.CALLS) <= 2048


# Each shape reads every row of `numbers` through its AI call, so scoring the column first is what streaming
# would do. The expected answers come from the same query with each call written as what the model does.
BULK_SHAPES = [
    "SELECT count(*), sum(y) FROM (SELECT ai_query('doubler', x) AS y FROM numbers)",
    "SELECT sum(ai_query('doubler', x)) FROM numbers GROUP BY id % 2 ORDER BY 1",
    "SELECT y, count(*) FROM (SELECT ai_query('doubler', x % 5) AS y FROM numbers) GROUP BY y ORDER BY y",
    "SELECT ai_query('doubler', x % 5) AS y, count(*) FROM numbers GROUP BY y ORDER BY y",
    "SELECT ai_query('doubler', x % 5), count(*) FROM numbers GROUP BY 1 ORDER BY 1",
    "SELECT ai_query('doubler', x % 5) + 1, count(*) FROM numbers GROUP BY ai_query('doubler', x % 5) + 1 ORDER BY 1",
    "SELECT count(*) FROM numbers WHERE ai_query('doubler', x) > 100",
    "SELECT count(*) FROM numbers WHERE id % 3 = 0 AND ai_query('doubler', x) > 100",
    "SELECT id FROM numbers WHERE ai_query('doubler', x) = 20",
    "WITH s AS (SELECT id, ai_query('doubler', x) AS y FROM numbers) SELECT count(*), max(y) FROM s WHERE y > 5",
    "SELECT id, ai_query('doubler', x) AS y FROM numbers ORDER BY y DESC LIMIT 3",
    "SELECT id, ai_query('doubler', x) AS y FROM numbers ORDER BY 2 DESC LIMIT 3",
    "SELECT * FROM (SELECT id, ai_query('doubler', x) AS y FROM numbers) ORDER BY y DESC LIMIT 3",
    "SELECT max(r) FROM (SELECT rank() OVER (PARTITION BY ai_query('doubler', x % 4) ORDER BY id) AS r FROM numbers)",
    "SELECT id, ai_query('doubler', x % 4) AS y FROM numbers QUALIFY row_number() OVER (PARTITION BY y ORDER BY id) = 1 ORDER BY id",
    "SELECT sum(s.y * m.x) FROM (SELECT id, ai_query('doubler', x) AS y FROM numbers) s JOIN numbers m ON s.id = m.id",
    "SELECT DISTINCT ai_query('doubler', x % 3) AS y FROM numbers ORDER BY y",
    "SELECT count(*) FROM (SELECT ai_query('doubler', x) AS y FROM numbers UNION ALL SELECT 1)",
    # No row position to score by: each distinct request is scored once, and the answers looked up.
    "SELECT sum(ai_query('doubler', n.x)) FROM numbers n JOIN numbers m ON n.id = m.id + 1",
    "SELECT ai_query('doubler', x % 7) AS y, count(*) FROM numbers_view GROUP BY y ORDER BY y",
    "WITH odd AS (SELECT * FROM numbers WHERE id % 2 = 1) SELECT count(*) FROM odd WHERE ai_query('doubler', x) > 50",
    "SELECT * FROM (SELECT id, ai_query('doubler', x) AS y FROM (SELECT * FROM numbers WHERE id < 100)) ORDER BY y DESC LIMIT 2",
]


@pytest.mark.parametrize("query", BULK_SHAPES)
def test_every_shape_that_reads_all_rows_takes_the_bulk_path(numbers, query: str) -> None:  # type: ignore[no-untyped-def]
    numbers.execute("CREATE VIEW numbers_view AS SELECT * FROM numbers")
    assert len(_prescores(numbers, query)) == 1
    answers = aifuncs.sql(numbers, query).fetchall()
    assert len(sample_models.CALLS) <= 2  # whole columns (or their distinct requests), not DuckDB's vectors
    by_hand = re.sub(r"ai_query\('doubler', ([^()]*)\)", r"((\1) * 2)", query)  # what `doubled` computes
    assert answers == numbers.sql(by_hand).fetchall()


def test_an_ai_filter_is_scored_first_and_a_call_after_it_sees_only_the_rows_it_keeps(numbers) -> None:  # type: ignore[no-untyped-def]
    rows = aifuncs.sql(
        numbers, "SELECT ai_query('doubler', x + 1) FROM numbers WHERE ai_query('doubler', x) < 20 ORDER BY 1"
    ).fetchall()
    assert rows == [(2.0 * (i + 1),) for i in range(10)]
    assert sample_models.CALLS == [ROWS, 10]  # the filter in one bulk call, the projection on its 10 rows


def test_streaming_and_bulk_answers_agree(numbers) -> None:  # type: ignore[no-untyped-def]
    bulk = aifuncs.sql(numbers, "SELECT id, ai_query('doubler', x) FROM numbers ORDER BY id").fetchall()
    streamed = aifuncs.sql(
        numbers, "SELECT id, ai_query('doubler', x) FROM numbers ORDER BY id LIMIT 100000"
    ).fetchall()
    assert bulk == streamed


def test_max_batch_rows_bounds_bulk_calls(numbers) -> None:  # type: ignore[no-untyped-def]
    aifuncs.endpoints.update("doubler", max_batch_rows=3000)
    aifuncs.sql(numbers, "SELECT ai_query('doubler', x) FROM numbers").fetchall()
    assert sample_models.CALLS == [2500] * 4  # the fewest equal calls within the bound


def test_a_big_table_is_split_in_equal_calls_one_per_core(con: duckdb.DuckDBPyConnection) -> None:
    aifuncs.endpoints.create(
        "doubler", kind="python", function="sample_models:doubled", returns="DOUBLE", max_concurrency=3
    )
    con.execute("CREATE TABLE big AS SELECT i::DOUBLE AS x FROM range(300000) t(i)")
    sample_models.CALLS.clear()
    aifuncs.sql(con, "CREATE TABLE scored AS SELECT x, ai_query('doubler', x) AS y FROM big")
    checked = con.sql("SELECT count(*), count(*) FILTER (y = 2 * x) FROM scored")
    assert checked.fetchall() == [(300000, 300000)]
    # Not one call of 262,144 and one of 37,856: three equal calls, all in flight together.
    assert sample_models.CALLS == [100000] * 3


def test_concurrent_model_calls_pass_the_gil_on_promptly_and_the_interval_comes_back(
    con: duckdb.DuckDBPyConnection,
) -> None:
    import sys

    previous = sys.getswitchinterval()
    sys.setswitchinterval(0.004)  # a process's own setting, longer than the bulk path's
    try:
        aifuncs.endpoints.create(
            "noting", kind="python", function="sample_models:doubled_noting_switch_interval", returns="DOUBLE",
            max_concurrency=2,
        )  # fmt: skip
        con.execute("CREATE TABLE big AS SELECT i::DOUBLE AS x FROM range(200000) t(i)")
        sample_models.SWITCH_INTERVALS.clear()
        aifuncs.sql(con, "CREATE TABLE scored AS SELECT ai_query('noting', x) AS y FROM big")
        assert len(sample_models.SWITCH_INTERVALS) == 2
        assert all(interval <= 0.001 for interval in sample_models.SWITCH_INTERVALS)
        assert sys.getswitchinterval() == pytest.approx(0.004, abs=1e-5)
    finally:
        sys.setswitchinterval(previous)


def test_overlapping_bulk_queries_restore_the_interval_only_when_the_last_ends() -> None:
    import sys

    from aifuncs.runtime._bulk import prompt_gil_handoffs

    previous = sys.getswitchinterval()
    try:
        sys.setswitchinterval(0.005)
        first, second = prompt_gil_handoffs(2), prompt_gil_handoffs(2)
        first.__enter__()
        second.__enter__()
        first.__exit__(None, None, None)
        assert sys.getswitchinterval() <= 0.001  # the second query still runs
        second.__exit__(None, None, None)
        assert sys.getswitchinterval() == pytest.approx(0.005, abs=1e-5)
        sys.setswitchinterval(0.0002)  # shorter already: kept
        with prompt_gil_handoffs(2):
            assert sys.getswitchinterval() == pytest.approx(0.0002, abs=1e-5)
        with prompt_gil_handoffs(1):  # one call at a time: nothing to hand over
            assert sys.getswitchinterval() == pytest.approx(0.0002, abs=1e-5)
    finally:
        sys.setswitchinterval(previous)


def test_steps_across_duckdb_row_groups_keep_their_order_and_the_promised_input(  # type: ignore[no-untyped-def]
    con: duckdb.DuckDBPyConnection,
) -> None:
    """DuckDB reads 122,880-row groups; a step of 150,000 rows spans two of them. Models that accept chunked
    batches get them uncopied, a function promised a `pa.Array` still gets one, and rows stay in order."""
    aifuncs.endpoints.create("doubler", kind="python", function="sample_models:doubled", returns="DOUBLE")
    aifuncs.endpoints.create(
        "arrow-doubler", kind="python", function="sample_models:arrow_doubled", input_format="arrow",
        returns="DOUBLE", max_concurrency=1,
    )  # fmt: skip
    con.execute("CREATE TABLE big AS SELECT i AS id, (i % 1000)::DOUBLE AS x FROM range(300000) t(i)")
    sample_models.CALLS.clear()
    sample_models.ARROW_TYPES.clear()
    aifuncs.sql(
        con,
        "CREATE TABLE scored AS SELECT id, x, ai_query('doubler', x) AS a, ai_query('arrow-doubler', x) AS b"
        " FROM big",
    )
    checked = con.sql(
        "SELECT count(*), count(*) FILTER (a = 2 * x AND b = 2 * x AND x = id % 1000) FROM scored"
    )
    assert checked.fetchall() == [(300000, 300000)]
    assert sample_models.ARROW_TYPES == ["DoubleArray", "DoubleArray"]  # two steps of 150,000, each one array


def _statement(con: duckdb.DuckDBPyConnection, query: str) -> tuple[Prescore, str]:
    from aifuncs.engines.duckdb import _hooks

    [planned] = rewrite(query, "duckdb", _hooks(con))
    [prescore] = planned.prescores
    return prescore, planned.sql


def test_few_fixed_width_columns_are_carried_instead_of_joined(numbers) -> None:  # type: ignore[no-untyped-def]
    """The statement reads the scores and its own columns from one prescored result: no POSITIONAL JOIN
    (a one-thread write), the filter applied once in the prescore."""
    numbers.execute("ALTER TABLE numbers ADD COLUMN Day DATE DEFAULT DATE '2026-12-01'")
    query = (
        "SELECT n.id, DAY, ai_query('doubler', x) AS y FROM numbers AS n WHERE id % 3 = 0 AND id < 3000"
        " ORDER BY y DESC, n.id"
    )
    prescore, sql = _statement(numbers, query)
    assert prescore.carried == ("id", "Day")  # the table's own spelling, in its order
    assert "POSITIONAL" not in sql and "WHERE" not in sql
    rows = aifuncs.sql(numbers, query).fetchall()
    assert sample_models.CALLS == [1000]
    assert [r[0] for r in rows] == list(range(2997, -1, -3))
    assert all(y == 2 * i and str(day) == "2026-12-01" for i, day, y in rows)


def test_an_unfiltered_carried_prescore_knows_its_rows_without_counting_again(numbers) -> None:  # type: ignore[no-untyped-def]
    whole, _ = _statement(numbers, "SELECT id, ai_query('doubler', x) AS y FROM numbers")
    assert whole.rows == ROWS  # the planner counted the table for its shape
    filtered, _ = _statement(numbers, "SELECT id, ai_query('doubler', x) AS y FROM numbers WHERE id < 10")
    assert filtered.rows is None  # the engine counts what the filter keeps
    from aifuncs.runtime._progress import Progress

    expected: list[int] = []

    class Recording(Progress):
        def expect(self, rows: int | None) -> None:
            expected.append(rows or 0)
            super().expect(rows)

    import io

    line = Recording(io.StringIO())
    for sql in (
        "SELECT id, ai_query('doubler', x) FROM numbers",
        "SELECT id, ai_query('doubler', x) FROM numbers WHERE id < 10",
    ):
        for _ in aifuncs.engines.duckdb.sql_each(numbers, sql, progress=line):
            pass
    assert expected == [ROWS, 10]


def test_select_star_carries_every_column_in_the_tables_order(numbers) -> None:  # type: ignore[no-untyped-def]
    query = "SELECT x, *, ai_query('doubler', x) AS y FROM numbers WHERE id < 3"
    prescore, _ = _statement(numbers, query)
    assert prescore.carried == ("id", "x")
    rel = aifuncs.sql(numbers, query)
    assert rel.columns == ["x", "id", "x_1", "y"]  # as DuckDB names a repeated column
    assert rel.fetchall() == [(float(i), i, float(i), 2.0 * i) for i in range(3)]


@pytest.mark.parametrize(
    "query",
    [
        "SELECT label, ai_query('doubler', x) FROM numbers",  # a VARCHAR: no fixed width
        "SELECT id, id2, id3, id4, id5, ai_query('doubler', x) FROM numbers",  # 40 bytes a row
        "SELECT rowid, ai_query('doubler', x) FROM numbers",  # a pseudo-column
        "SELECT id, (SELECT max(id) FROM numbers m WHERE m.id < numbers.id), ai_query('doubler', x) FROM numbers",
        "SELECT list_transform([1], v -> v + id), ai_query('doubler', x) FROM numbers",
        "SELECT s.id, ai_query('doubler', x) FROM numbers",  # a field of the STRUCT column s, not id
        "SELECT COLUMNS('i.*'), ai_query('doubler', x) FROM numbers",  # a regex could match the scores
    ],
)
def test_other_columns_are_joined_by_position(numbers, query: str) -> None:  # type: ignore[no-untyped-def]
    numbers.execute("ALTER TABLE numbers ADD COLUMN label VARCHAR DEFAULT 'n'")
    numbers.execute("ALTER TABLE numbers ADD COLUMN s STRUCT(id INTEGER) DEFAULT {'id': 7}")
    for extra in ("id2", "id3", "id4", "id5"):
        numbers.execute(f"ALTER TABLE numbers ADD COLUMN {extra} BIGINT DEFAULT 1")
    prescore, sql = _statement(numbers, query)
    assert prescore.carried == () and "POSITIONAL JOIN" in sql
    rows = aifuncs.sql(numbers, query + " ORDER BY 1").fetchall()
    assert len(rows) == ROWS and sample_models.CALLS == [ROWS]


def test_carried_and_joined_plans_give_the_same_rows(numbers) -> None:  # type: ignore[no-untyped-def]
    from aifuncs.engines import duckdb as engine

    query = "SELECT id, ai_query('doubler', x) AS y, id * 2 AS z FROM numbers WHERE id > 17 ORDER BY id"
    carried = aifuncs.sql(numbers, query).fetchall()
    hooks = engine._hooks
    try:  # an engine that cannot tell a table's shape: every bulk statement joins by position
        engine._hooks = lambda con: dataclasses.replace(hooks(con), shape=lambda name: None)
        assert "POSITIONAL JOIN" in _statement(numbers, query)[1]
        joined = aifuncs.sql(numbers, query).fetchall()
    finally:
        engine._hooks = hooks
    assert carried == joined and len(carried) == ROWS - 18


def test_a_request_the_lookup_does_not_hold_is_asked_as_it_streams(numbers) -> None:  # type: ignore[no-untyped-def]
    # A view that draws other rows each time it is read: the statement meets requests the prescore never saw.
    numbers.execute("CREATE VIEW drawn AS SELECT * FROM numbers WHERE random() < 0.5")
    assert len(_prescores(numbers, "SELECT count(ai_query('doubler', x)) FROM drawn")) == 1
    rows, answered, wrong = aifuncs.sql(
        numbers,
        "SELECT count(*), count(ai_query('doubler', x)), sum(ai_query('doubler', x) - 2 * x) FROM drawn",
    ).fetchall()[0]
    assert rows == answered and wrong == 0
    assert len(sample_models.CALLS) > 2  # the first draw in two lookups, then the rest of the second draw


def test_a_lookup_keeps_no_answer_when_every_row_is_asked_afresh(numbers) -> None:  # type: ignore[no-untyped-def]
    query = (
        "SELECT count(*) FROM numbers n JOIN numbers m ON n.id = m.id WHERE ai_query('doubler', n.x % 3) > 1"
    )
    assert len(_prescores(numbers, query)) == 1
    assert aifuncs.sql(numbers, query).fetchall() == [(ROWS * 2 // 3,)]
    assert sample_models.CALLS == [3]  # three distinct requests
    aifuncs.endpoints.update("doubler", cache=False)
    assert _prescores(numbers, query) == []


def test_a_struct_request_with_null_fields_is_looked_up_like_any_other(con) -> None:  # type: ignore[no-untyped-def]
    aifuncs.endpoints.create("pairs", kind="python", function="sample_models:doubled", returns="DOUBLE")
    con.execute("CREATE TABLE t AS SELECT i AS id, (i % 5)::DOUBLE AS a, CASE WHEN i % 7 = 0 THEN NULL"
                " ELSE (i % 3)::DOUBLE END AS b FROM range(3000) r(i)")  # fmt: skip
    con.execute("CREATE VIEW v AS SELECT * FROM t")
    query = (
        "SELECT count(*) FILTER (WHERE isnan(y)), sum(y) FILTER (WHERE NOT isnan(y)), count(y)"
        " FROM (SELECT ai_query('pairs', struct_pack(a, b)) AS y FROM v)"
    )  # the model answers NaN where b is NULL
    prescores = _prescores(con, query)
    assert len(prescores) == 1 and prescores[0].distinct
    sample_models.CALLS.clear()
    answers = aifuncs.sql(con, query).fetchall()[0]
    assert (
        answers
        == con.sql("SELECT count(*) FILTER (WHERE b IS NULL), sum(a * 2 + b), 3000 FROM t").fetchall()[0]
    )
    assert sample_models.CALLS == [20]  # 5 x 4 distinct requests (b NULL among them), each asked once


def test_a_streamed_call_in_another_conjunct_never_runs_in_the_prescore(numbers) -> None:  # type: ignore[no-untyped-def]
    query = (
        "SELECT count(*) FROM numbers WHERE CASE WHEN id < 10 THEN ai_query('doubler', x) END > 1"
        " AND ai_query('doubler', x + 1) > 5"
    )
    [prescore] = _prescores(numbers, query)
    assert "__aifuncs_ai_query" not in prescore.source.lower()  # the CASE's call stays in the statement
    assert aifuncs.sql(numbers, query).fetchall() == [(8,)]  # ids 2..9
    assert sorted(sample_models.CALLS)[-1] == ROWS  # the bulk call: every row, in one call
