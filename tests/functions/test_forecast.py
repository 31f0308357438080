"""ai_forecast: Databricks' table function, per group, with statsmodels' exponential smoothing offline."""

from __future__ import annotations

import math
from datetime import date, datetime, timedelta

import duckdb
import pytest

import aifuncs
from aifuncs.errors import ArgumentError

SALES = """
CREATE TABLE sales AS
SELECT DATE '2026-01-01' + i::INT AS day, s AS store,
       100 + 20 * s + 8 * sin(2 * pi() * i / 7) + 0.2 * i + hash(i, s) % 100 / 100.0 AS revenue,
       10 + s + 2 * cos(2 * pi() * i / 7) AS units
FROM range(140) t(i), range(3) u(s)
WHERE NOT (s = 1 AND i % 10 = 3)            -- store 1 misses every tenth day
UNION ALL SELECT DATE '2026-05-01', 9, 5.0, 1.0   -- store 9: one day of history
"""


@pytest.fixture
def sales(con: duckdb.DuckDBPyConnection) -> duckdb.DuckDBPyConnection:
    con.execute(SALES)
    return con


def truth(store: int, i: int) -> float:
    return 100 + 20 * store + 8 * math.sin(2 * math.pi * i / 7) + 0.2 * i + 0.5


def test_each_group_is_forecast_to_the_horizon_with_databricks_columns(
    sales: duckdb.DuckDBPyConnection,
) -> None:
    relation = aifuncs.sql(
        sales,
        """SELECT * FROM ai_forecast(TABLE(sales), horizon => '2026-06-04', time_col => 'day',
                                      value_col => array('revenue', 'units'), group_col => 'store',
                                      prediction_interval_width => 0.9, frequency => 'D', seed => 7)
           ORDER BY store, day""",
        dialect="databricks",
    )
    assert relation is not None
    assert relation.columns == [
        "day", "store", "revenue_forecast", "revenue_upper", "revenue_lower",
        "units_forecast", "units_upper", "units_lower", "error_message",
    ]  # fmt: skip
    assert [str(t) for t in relation.types][:3] == ["DATE", "BIGINT", "DOUBLE"]
    rows = relation.fetchall()
    by_store: dict[int, list[tuple]] = {}
    for row in rows:
        by_store.setdefault(row[1], []).append(row)
    first = date(2026, 5, 21)  # the day after the last of 140 days of history
    for store in (0, 1, 2):  # store 1's missing days were filled on the daily grid
        steps = by_store[store]
        # up to the horizon, not including it (Databricks' horizon is right-exclusive): 05-21 to 06-03
        assert [r[0] for r in steps] == [first + timedelta(days=k) for k in range(14)]
        assert all(r[8] is None and r[4] <= r[2] <= r[3] and r[7] <= r[5] <= r[6] for r in steps)
        errors = [abs(r[2] - truth(store, 140 + k)) for k, r in enumerate(steps)]
        assert max(errors) < 3.0, errors  # the weekly season and the trend were found
    ((_, store, *values, message),) = by_store[9]  # too short: one row that says so
    assert store == 9 and values == [None] * 6 and "needs at least 4" in message


def test_frequencies_as_databricks_spells_them(con: duckdb.DuckDBPyConnection) -> None:
    con.execute(
        "CREATE TABLE monthly AS SELECT (DATE '2020-01-01' + INTERVAL (i) MONTH)::DATE AS month,"
        " 50 + 10 * sin(2 * pi() * i / 12) + i AS visits FROM range(60) t(i)"
    )
    rows = aifuncs.sql(
        con,
        "SELECT month, visits_forecast FROM ai_forecast(TABLE(monthly), horizon => '2025-06-01',"
        " time_col => 'month', value_col => 'visits', frequency => 'month') ORDER BY month",
        dialect="databricks",
    ).fetchall()
    assert [r[0] for r in rows] == [date(2025, m, 1) for m in range(1, 6)]  # month starts, June excluded
    assert all(
        abs(v - (50 + 10 * math.sin(2 * math.pi * (60 + k) / 12) + 60 + k)) < 3
        for k, (_, v) in enumerate(rows)
    )
    con.execute(
        "CREATE TABLE hourly AS SELECT TIMESTAMP '2026-03-01 00:00' + INTERVAL (i) HOUR AS ts,"
        " 5 + (i % 24) / 4.0 AS load FROM range(24 * 10) t(i)"
    )
    auto = aifuncs.sql(
        con,
        "SELECT ts FROM ai_forecast(TABLE(SELECT ts, load FROM hourly WHERE load IS NOT NULL),"
        " horizon => '2026-03-11 05:00:00', time_col => 'ts', value_col => 'load') ORDER BY ts",
        dialect="databricks",
    ).fetchall()  # frequency auto: hourly, read from the data; a TABLE(SELECT ...) history
    assert [r[0] for r in auto] == [datetime(2026, 3, 11, h) for h in range(5)]
    with pytest.raises(ArgumentError, match="frequency 'fortnight' is not one Databricks knows"):
        aifuncs.sql(
            con,
            "SELECT * FROM ai_forecast(TABLE(hourly), horizon => '2026-03-12', time_col => 'ts',"
            " value_col => 'load', frequency => 'fortnight', parameters => '{\"model\": \"arima\"}')",
            dialect="databricks",
        )


def test_models_are_picked_by_parameters_and_bad_arguments_are_named(
    sales: duckdb.DuckDBPyConnection,
) -> None:
    def forecast(parameters: str) -> list[tuple]:
        return aifuncs.sql(
            sales,
            "SELECT revenue_forecast, error_message FROM ai_forecast(TABLE(SELECT * FROM sales WHERE store = 0),"
            f" horizon => '2026-05-27', time_col => 'day', value_col => 'revenue', parameters => '{parameters}')",
            dialect="databricks",
        ).fetchall()

    naive = forecast('{"model": "seasonal_naive", "seasonal_period": 7}')
    assert len(naive) == 6 and all(message is None for _, message in naive)  # 05-21 to 05-26
    arima = forecast('{"model": "arima", "global_floor": 0}')
    assert len(arima) == 6 and all(value is not None and value >= 0 for value, _ in arima)
    with pytest.raises(ArgumentError, match="unknown daily_seasonality"):
        forecast('{"daily_seasonality": true}')
    for query, message in [
        ("ai_forecast(TABLE(sales), horizon => '2026-06-01', time_col => 'store', value_col => 'revenue')",
         "time_col 'store' is BIGINT; it must be a DATE or TIMESTAMP column"),
        ("ai_forecast(sales, horizon => '2026-06-01', time_col => 'day', value_col => 'revenue')",
         r"reads its history from TABLE\(name\)"),
        ("ai_forecast(TABLE(sales), horizon => '2026-06-01', time_col => 'day', value_col => 'revenue',"
         " prediction_interval_width => 2)", "prediction_interval_width is between 0 and 1"),
    ]:  # fmt: skip
        with pytest.raises(ArgumentError, match=message):
            aifuncs.sql(sales, f"SELECT * FROM {query}", dialect="databricks")


def test_forecasts_are_counted_in_the_usage_log(sales: duckdb.DuckDBPyConnection) -> None:
    aifuncs.sql(
        sales,
        "SELECT * FROM ai_forecast(TABLE(sales), horizon => '2026-05-22', time_col => 'day',"
        " value_col => 'units', group_col => 'store')",
        dialect="databricks",
    ).fetchall()
    usage = sales.sql(
        "SELECT count(*), sum(rows), count(*) FILTER (WHERE status = 'error'), min(function), max(function)"
        " FROM aifuncs_usage WHERE endpoint = 'forecaster'"
    ).fetchall()
    assert usage == [(4, 4, 1, "ai_forecast", "ai_forecast")]  # one request per group; store 9 failed


def test_the_horizon_is_excluded_as_in_databricks(con: duckdb.DuckDBPyConnection) -> None:
    con.execute(
        "CREATE TABLE monthly AS SELECT (DATE '2022-01-01' + INTERVAL (i) MONTH)::DATE AS month, 50 + 10 * sin(i)"
        " + hash(i) % 10 / 10.0 AS visits FROM range(12) t(i)"
    )  # history to 2022-12

    def months(horizon: str) -> list[tuple]:
        return aifuncs.sql(
            con,
            f"SELECT month, error_message FROM ai_forecast(TABLE(monthly), horizon => '{horizon}',"
            " time_col => 'month', value_col => 'visits', frequency => 'month') ORDER BY month",
            dialect="databricks",
        ).fetchall()

    # Databricks gives 3 rows: from the last observation up to, not including, the horizon
    assert months("2023-04-01") == [(date(2023, m, 1), None) for m in (1, 2, 3)]
    assert [m for m, _ in months("2023-04-15")] == [date(2023, m, 1) for m in (1, 2, 3, 4)]  # April is before
    ((month, message),) = months("2023-01-01")  # no step before the horizon: the group says so on its row
    assert month is None and "leaves no step after the last time" in message and "later horizon" in message
