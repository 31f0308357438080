"""Benchmark: ai_forecast's accuracy on real series that ship inside statsmodels, and its speed.

    python tests/bench/bench_forecast.py [--series N]

Accuracy: each series' last `h` points are held out; ai_forecast (the default model, 95% intervals) sees
the rest, through SQL, one query per dataset with a group per series. Printed per dataset: MASE (the
holdout MAE over the in-sample MAE of the one-season-back forecast), the MAE relative to the seasonal naive
forecast of the same holdout (target: below 1), and how many held-out points the 95% intervals hold
(target: within 5 points of 95%), for the four single series and with the macro series, whose held-out
quarters (2007Q4-2009Q3) are the recession. Speed: N synthetic daily series (120 days, weekly season, trend, noise)
forecast 14 days ahead in one query: seconds per 1,000 series.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from typing import Any

import numpy as np
import pandas as pd


def datasets() -> dict[str, tuple[pd.DataFrame, int, int, str]]:
    """name -> (rows of series/time/value, season m, held-out steps h, frequency)."""
    import statsmodels.api as sm

    found: dict[str, tuple[pd.DataFrame, int, int, str]] = {}
    co2 = sm.datasets.co2.load_pandas().data["co2"].resample("MS").mean().interpolate()
    found["co2 (monthly, 1958-2001)"] = (_frame({"co2": co2}), 12, 24, "month")
    elnino = sm.datasets.elnino.load_pandas().data.set_index("YEAR")
    temps = pd.Series(
        elnino.to_numpy().ravel(), index=pd.date_range("1950-01-01", periods=elnino.size, freq="MS")
    )
    found["El Nino sea temperature (monthly)"] = (_frame({"elnino": temps}), 12, 24, "month")
    sunspots = sm.datasets.sunspots.load_pandas().data
    spots = pd.Series(
        sunspots["SUNACTIVITY"].to_numpy(),
        index=pd.date_range("1700-01-01", periods=len(sunspots), freq="YS"),
    )
    found["sunspots (yearly, 1700-2008)"] = (_frame({"sunspots": spots}), 11, 11, "year")
    nile = sm.datasets.nile.load_pandas().data
    flow = pd.Series(
        nile["volume"].to_numpy(), index=pd.date_range("1871-01-01", periods=len(nile), freq="YS")
    )
    found["Nile flow (yearly)"] = (_frame({"nile": flow}), 1, 10, "year")
    macro = sm.datasets.macrodata.load_pandas().data
    quarters = pd.date_range("1959-01-01", periods=len(macro), freq="QS")
    columns = ["realgdp", "realcons", "realinv", "realgovt", "realdpi", "cpi", "m1", "unemp", "pop"]
    found["US macro, 9 quarterly series"] = (
        _frame({c: pd.Series(macro[c].to_numpy(), index=quarters) for c in columns}),
        4,
        8,
        "quarter",
    )
    return found


def _frame(series: dict[str, pd.Series]) -> pd.DataFrame:
    return pd.concat(
        [pd.DataFrame({"series": name, "t": s.index, "value": s.to_numpy()}) for name, s in series.items()]
    )


def accuracy(
    con: Any, name: str, rows: pd.DataFrame, m: int, h: int, frequency: str
) -> tuple[float, float, float, int, int]:
    import aifuncs

    history, held = [], []
    for _, group in rows.groupby("series"):
        group = group.sort_values("t")
        history.append(group.iloc[:-h])
        held.append(group.iloc[-h:])
    con.register("history_frame", pd.concat(history))
    con.execute("CREATE OR REPLACE TABLE history AS SELECT series, t::DATE AS t, value FROM history_frame")
    con.unregister("history_frame")
    months = {"month": 1, "quarter": 3, "year": 12}[frequency]
    last = max(g["t"].max() for g in held)
    horizon = (last + pd.DateOffset(months=months)).date().isoformat()  # excluded: the step after the last
    forecast = aifuncs.sql(
        con,
        f"SELECT series, t, value_forecast, value_lower, value_upper FROM ai_forecast(TABLE(history),"
        f" horizon => '{horizon}', time_col => 't', value_col => 'value', group_col => 'series',"
        f" frequency => '{frequency}', prediction_interval_width => 0.95, seed => 7)",
        dialect="databricks",
    ).df()
    mase, relative, covered, points = [], [], 0, 0
    for past, future in zip(history, held, strict=True):
        key = future["series"].iloc[0]
        mine = forecast[forecast["series"] == key].sort_values("t")
        actual = future["value"].to_numpy()
        predicted = mine["value_forecast"].to_numpy()[:h]
        train = past["value"].to_numpy()
        scale = np.mean(np.abs(train[m:] - train[:-m]))
        naive = np.array([train[len(train) - m + (k % m)] for k in range(h)])
        error = np.mean(np.abs(actual - predicted))
        mase.append(error / scale)
        relative.append(error / np.mean(np.abs(actual - naive)))
        lower, upper = mine["value_lower"].to_numpy()[:h], mine["value_upper"].to_numpy()[:h]
        covered += int(np.sum((actual >= lower) & (actual <= upper)))
        points += h
    return float(np.mean(mase)), float(np.mean(relative)), covered / points, points, len(held)


def speed(con: Any, count: int) -> float:
    import aifuncs

    con.execute(
        f"""CREATE OR REPLACE TABLE many AS
        SELECT s AS series, DATE '2026-01-01' + i::INT AS day,
               50 + s % 17 + 6 * sin(2 * pi() * i / 7) + 0.1 * i + (hash(s, i) % 1000) / 250.0 AS value
        FROM range({count}) a(s), range(120) b(i)"""
    )
    start = time.perf_counter()
    answered = aifuncs.sql(
        con,
        "SELECT count(*) FILTER (WHERE error_message IS NULL), count(DISTINCT series) FROM ai_forecast(TABLE(many),"
        " horizon => '2026-05-15', time_col => 'day', value_col => 'value', group_col => 'series', frequency => 'D')",
        dialect="databricks",
    ).fetchall()[0]
    seconds = time.perf_counter() - start
    assert answered == (14 * count, count), answered
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--series", type=int, default=1000, help="synthetic series for the speed figure")
    args = parser.parse_args()
    os.environ["AIFUNCS_HOME"] = tempfile.mkdtemp(prefix="aifuncs-bench-")
    import aifuncs

    con = aifuncs.connect()
    print(f"{'dataset':34} {'series':>6} {'points':>6} {'MASE':>6} {'vs s.naive':>10} {'95% PI holds':>12}")
    results = []
    for name, (rows, m, h, frequency) in datasets().items():
        mase, relative, coverage, points, series = accuracy(con, name, rows, m, h, frequency)
        results.append((name, relative, round(coverage * points), points))
        print(f"{name:34} {series:6} {points:6} {mase:6.2f} {relative:9.2f}x {coverage:11.1%}")
    for label, chosen in (
        ("the four single series", [r for r in results if not r[0].startswith("US macro")]),
        ("all five datasets", results),
    ):
        covered, points = sum(r[2] for r in chosen), sum(r[3] for r in chosen)
        print(
            f"{label:34} {'':6} {points:6} {'':6} {np.mean([r[1] for r in chosen]):9.2f}x {covered / points:11.1%}"
            "   (targets: below 1x; 90%-100%)"
        )
    seconds = speed(con, args.series)
    print(
        f"speed: {args.series:,} daily series of 120 points, 14 days ahead: {seconds:.1f} s,"
        f" {seconds * 1000 / args.series:.1f} s per 1,000 series ({os.cpu_count()} CPUs)"
    )


if __name__ == "__main__":
    main()
