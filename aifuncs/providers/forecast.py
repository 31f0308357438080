"""`forecast` endpoints: time-series forecasts for `ai_forecast`, one series per request, fit in this process.

A request is one group's history: `{points: [{t, <value column>...}, ...]}`. The answer is the group's future
steps, `[{<time column>, <v>_forecast, <v>_upper, <v>_lower, ...}]`, as the call's result type names them.
The history is put on the frequency's grid first (duplicates averaged, missing steps interpolated), each
value column is fit on its own, and the default forecast is the mean of two statsmodels models, damped-trend
exponential smoothing and an autoregression over a season and more, with the season the frequency suggests
or the autocorrelation finds; `model` may pick ETS or ARIMA chosen by AICc, or the seasonal naive forecast.
"""

from __future__ import annotations

import asyncio
import json
import math
import warnings
from typing import Any, Literal

import numpy as np
import pandas as pd
import pyarrow as pa
from pydantic import Field

from aifuncs._types import arrow_type
from aifuncs.errors import ArgumentError
from aifuncs.providers.base import CallOptions, Provider, ProviderOptions

MIN_POINTS = 4
MAX_STEPS = 100_000

# Databricks' frequency spellings -> pandas offsets (months, quarters and years anchored to the data).
_FREQUENCIES = {
    "s": "s", "sec": "s", "second": "s", "seconds": "s",
    "t": "min", "min": "min", "minute": "min", "minutes": "min",
    "h": "h", "hour": "h", "hours": "h",
    "d": "D", "day": "D", "days": "D",
    "w": "W", "week": "W", "weeks": "W",
    "m": "M", "month": "M", "months": "M",
    "q": "Q", "quarter": "Q", "quarters": "Q",
    "y": "Y", "year": "Y", "years": "Y",
}  # fmt: skip
# The season a frequency suggests, in steps.
_SEASONS = {"s": 60, "min": 60, "h": 24, "D": 7, "W": 52, "M": 12, "Q": 4, "Y": 0}
_PARAMETERS = {"model", "seasonal_period", "global_floor", "global_cap"}


class ForecastOptions(ProviderOptions):
    model: Literal["auto", "ets", "arima", "seasonal_naive"] = Field(
        default="auto",
        description="auto: the mean of damped exponential smoothing and a seasonal autoregression; ets:"
        " exponential smoothing chosen by AICc; arima: ARIMA chosen by AICc; seasonal_naive: the last season.",
    )
    seasonal_period: int | None = Field(
        default=None, ge=2, description="Steps per season; default: from the frequency and the data."
    )


class ForecastProvider(Provider):
    kind = "forecast"
    Options = ForecastOptions
    options: ForecastOptions
    default_batch_rows = 1  # a request is a series: each is fit, and fails, on its own
    # One fit at a time: statsmodels' fitting is many small numpy steps under the GIL, and two threads were
    # no faster than one (100 series: 10.9-12.8 s against 9.7-11.8 s).
    default_concurrency = 1
    blocking = True

    def deterministic(self, options: CallOptions) -> bool:
        return False  # a forecast depends on arguments the request does not carry (horizon...): never reused

    async def predict(self, requests: pa.Array, options: CallOptions) -> Any:
        return await asyncio.to_thread(self.predict_blocking, requests, options)

    def predict_blocking(self, requests: pa.Array, options: CallOptions) -> Any:
        settings = dict(options.parameters or {})
        steps_type = arrow_type(options.result_type)
        return [self._forecast(row, settings, steps_type) for row in requests.to_pylist()]

    def _forecast(self, row: dict[str, Any] | None, settings: dict[str, Any], steps_type: pa.DataType) -> Any:
        if row is None:
            return None
        step = steps_type.value_type
        time_name = step[0].name
        values = [step[i].name.removesuffix("_forecast") for i in range(1, step.num_fields, 3)]
        extra = json.loads(settings.get("parameters") or "{}")
        unknown = sorted(set(extra) - _PARAMETERS)
        if unknown:
            raise ArgumentError(
                f"ai_forecast parameters: unknown {', '.join(unknown)}; known: {', '.join(sorted(_PARAMETERS))}."
            )
        frame = pd.DataFrame([p for p in row["points"] or [] if p and p.get("t") is not None])
        if frame.empty:
            raise ValueError("the group has no points with a time")
        times = pd.to_datetime(frame["t"])
        zoned = times.dt.tz is not None
        history = frame[values].astype("float64").set_axis(times.dt.tz_convert(None) if zoned else times)
        history = history.groupby(level=0).mean().sort_index()
        freq = _offset(settings.get("frequency") or "auto", history.index)
        grid = pd.date_range(history.index[0], history.index[-1], freq=freq)
        if len(grid) > 10 * len(history) + 1000:
            raise ValueError(
                f"frequency {settings.get('frequency')!r} makes {len(grid):,} steps of {len(history):,} points:"
                " pick the frequency the data is kept at"
            )
        history = history.reindex(history.index.union(grid)).interpolate("time").reindex(grid)
        horizon = pd.Timestamp(settings["horizon"])
        horizon = horizon.tz_convert(None) if horizon.tzinfo is not None else horizon
        # Databricks' horizon is right-exclusive: the steps after the last time, up to but not including it.
        future = pd.date_range(grid[-1], horizon, freq=freq)[1:]
        future = future[future < horizon]
        if len(future) == 0:
            raise ValueError(
                f"the horizon {settings['horizon']} leaves no step after the last time, {grid[-1]} (the horizon"
                " itself is not forecast): give a later horizon"
            )
        if len(future) > MAX_STEPS:
            raise ValueError(f"{len(future):,} steps to the horizon: at most {MAX_STEPS:,}")
        width = float(settings.get("prediction_interval_width", 0.95))
        seed = settings.get("seed")
        model = str(extra.get("model") or self.options.model)
        season = extra.get("seasonal_period") or self.options.seasonal_period
        columns: dict[str, Any] = {
            time_name: (future.tz_localize("UTC") if zoned else future).to_pydatetime()
        }
        for name in values:
            series = history[name].to_numpy()
            if np.isnan(series).all():
                raise ValueError(f"{name} has no values")
            series = pd.Series(series).interpolate(limit_direction="both").to_numpy()
            if len(series) < MIN_POINTS:
                raise ValueError(
                    f"{len(series)} points in the history: ai_forecast needs at least {MIN_POINTS} to fit a model"
                )
            period = int(season) if season else _season(freq, series)
            rng_state = np.random.get_state()
            if seed is not None:
                np.random.seed(int(seed) % 2**32)
            try:
                mean, lower, upper = _fit(model, series, period, len(future), width)
            finally:
                np.random.set_state(rng_state)
            floor, cap = extra.get("global_floor"), extra.get("global_cap")
            if floor is not None or cap is not None:
                mean, lower, upper = (np.clip(a, floor, cap) for a in (mean, lower, upper))
            columns[f"{name}_forecast"], columns[f"{name}_upper"], columns[f"{name}_lower"] = (
                mean,
                upper,
                lower,
            )
        if pa.types.is_date(step[0].type):
            columns[time_name] = [t.date() for t in columns[time_name]]
        names = [f.name for f in step]
        return [
            {n: (columns[n][i] if n == time_name else _number(columns[n][i])) for n in names}
            for i in range(len(future))
        ]


def _number(value: Any) -> float | None:
    number = float(value)
    return number if math.isfinite(number) else None


def _offset(frequency: str, index: pd.DatetimeIndex) -> str:
    """A pandas offset for Databricks' frequency (`auto`: read from the data), anchored like the data."""
    spelled = frequency.strip()
    if spelled.lower() == "auto":
        with warnings.catch_warnings():
            warnings.simplefilter(
                "ignore"
            )  # pandas 3 announces an offset instead of text: either is read below
            inferred = pd.infer_freq(index) if len(index) >= 3 else None
        if inferred is not None:
            return str(getattr(inferred, "freqstr", inferred))
        gaps = pd.Series(index).diff().dropna()  # Timedeltas, whatever the index's resolution
        if gaps.empty:
            raise ValueError(f"one point in the history: ai_forecast needs at least {MIN_POINTS}")
        median = pd.Timedelta(gaps.median())
        for days, unit in ((360, "Y"), (88, "Q"), (28, "M"), (7, "W"), (1, "D")):
            if median >= pd.Timedelta(days=days):
                return _anchored(unit, index)
        return pd.tseries.frequencies.to_offset(median).freqstr
    count, unit = _split(spelled)
    base = _FREQUENCIES.get(unit.lower()) if unit else None
    if base is None:
        raise ArgumentError(
            f"ai_forecast: frequency {frequency!r} is not one Databricks knows: use auto, D (day), W (week), M"
            " (month), Q, Y, H (hour), min, s, with an optional count such as '15 minutes'."
        )
    anchored = _anchored(base, index)
    return f"{count}{anchored}" if count > 1 else anchored


def check_settings(frequency: str, parameters: str) -> None:
    """What the planner checks before any series is sent: the frequency's spelling and the parameters."""
    if frequency.strip().lower() != "auto":
        count, unit = _split(frequency.strip())
        if _FREQUENCIES.get(unit.lower()) is None:
            _offset(frequency, pd.DatetimeIndex([]))  # raises the error that lists the spellings
    try:
        extra = json.loads(parameters or "{}")
    except json.JSONDecodeError as error:
        raise ArgumentError(
            f"ai_forecast: parameters is a JSON object; {parameters!r} is not JSON ({error})."
        ) from None
    if not isinstance(extra, dict):
        raise ArgumentError(f"ai_forecast: parameters is a JSON object, not {parameters!r}.")
    unknown = sorted(set(extra) - _PARAMETERS)
    if unknown:
        raise ArgumentError(
            f"ai_forecast parameters: unknown {', '.join(unknown)}; known: {', '.join(sorted(_PARAMETERS))}."
        )
    if extra.get("model") not in (None, "auto", "ets", "arima", "seasonal_naive"):
        raise ArgumentError(
            f"ai_forecast parameters: model {extra['model']!r}; use auto, ets, arima or seasonal_naive."
        )


def _split(text: str) -> tuple[int, str]:
    digits = "".join(c for c in text if c.isdigit())
    unit = text[len(digits) :].strip() if text[: len(digits)] == digits else text
    return (int(digits) if digits else 1), unit


def _anchored(unit: str, index: pd.DatetimeIndex) -> str:
    """Weeks keep the data's weekday; months, quarters and years their start or end as the data does."""
    if unit == "W":
        return f"W-{index[-1].day_name()[:3].upper()}"
    if unit in ("M", "Q", "Y"):
        starts = bool((index.day == 1).all())
        return f"{unit}S" if starts else f"{unit}E"
    return unit


def _season(freq: str, series: np.ndarray) -> int:
    """Steps per season: the frequency's usual cycle if the data has it, else the strongest autocorrelation
    peak (e.g. the ~11-year sunspot cycle); 0 for none. Two full seasons are needed to fit one."""
    from statsmodels.tsa.stattools import acf

    n = len(series)
    unit = "".join(c for c in freq if c.isalpha()).split("-")[0]
    unit = {"MS": "M", "ME": "M", "QS": "Q", "QE": "Q", "YS": "Y", "YE": "Y"}.get(unit, unit)
    suggested = _SEASONS.get(unit, 0)
    if n < 8:
        return 0
    correlations = acf(series - np.linspace(series[0], series[-1], n), nlags=min(n // 2, 400), fft=True)
    if suggested and n >= 2 * suggested + 2 and suggested < len(correlations):
        if correlations[suggested] > 0.2:
            return suggested
    peaks = [
        lag
        for lag in range(2, len(correlations) - 1)
        if correlations[lag] > correlations[lag - 1] and correlations[lag] >= correlations[lag + 1]
    ]
    best = max(peaks, key=lambda lag: correlations[lag], default=0)
    return best if best and correlations[best] > 0.3 and n >= 2 * best + 2 else 0


Fitted = tuple[np.ndarray, np.ndarray, np.ndarray]  # mean, lower, upper


def _fit(model: str, series: np.ndarray, period: int, steps: int, width: float) -> Fitted:
    alpha = 1 - width
    if model == "seasonal_naive":
        return _seasonal_naive(series, period, steps, width)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # convergence chatter on short or flat series: the choice decides
        if model == "arima":
            return _arima(series, period, steps, alpha)
        if model == "ets":
            return _ets(series, period, steps, alpha)
        return _combined(series, period, steps, alpha)


def _combined(series: np.ndarray, period: int, steps: int, alpha: float) -> Fitted:
    """The default: the mean of two unlike forecasts, damped-trend exponential smoothing (with the season
    when the history holds two) and an autoregression over a season and more (long cycles such as
    sunspots'), their interval bounds averaged too. On the held-out ends of statsmodels' CO2, El Nino,
    sunspot and Nile series the mean beat each model alone and choosing one by a validation stretch
    (tests/bench/bench_forecast.py)."""
    fitted = []
    for model in (_ets_quick, _autoregression):
        try:
            mean, lower, upper = model(series, period, steps, alpha)
        except (ValueError, np.linalg.LinAlgError, IndexError):
            continue
        if np.isfinite(mean).all():
            fitted.append((mean, lower, upper))
    if not fitted:
        raise ValueError("no model fits this series")
    mean, lower, upper = (np.mean([f[i] for f in fitted], axis=0) for i in range(3))
    return mean, lower, upper


def _ets_quick(series: np.ndarray, period: int, steps: int, alpha: float) -> Fitted:
    from statsmodels.tsa.exponential_smoothing.ets import ETSModel

    seasonal = "add" if period and len(series) >= 2 * period + 2 else None
    fitted = ETSModel(
        pd.Series(series), error="add", trend="add", damped_trend=True, seasonal=seasonal,
        seasonal_periods=period if seasonal else None,
    ).fit(disp=False)  # fmt: skip
    frame = fitted.get_prediction(start=len(series), end=len(series) + steps - 1).summary_frame(alpha=alpha)
    return frame["mean"].to_numpy(), frame["pi_lower"].to_numpy(), frame["pi_upper"].to_numpy()


def _autoregression(series: np.ndarray, period: int, steps: int, alpha: float) -> Fitted:
    from statsmodels.tsa.ar_model import AutoReg

    lags = min(max(period + 1, 3), len(series) // 3)
    if lags < 1:
        raise ValueError("too short for an autoregression")
    fitted = AutoReg(series, lags=lags, trend="c").fit()
    frame = fitted.get_prediction(start=len(series), end=len(series) + steps - 1).summary_frame(alpha=alpha)
    return frame["mean"].to_numpy(), frame["mean_ci_lower"].to_numpy(), frame["mean_ci_upper"].to_numpy()


def _ets(
    series: np.ndarray, period: int, steps: int, alpha: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    from statsmodels.tsa.exponential_smoothing.ets import ETSModel

    candidates: list[tuple[str | None, bool, str | None]] = [(None, False, None), ("add", True, None)]
    if period:
        candidates += [(None, False, "add"), ("add", True, "add")]
    best, best_score = None, math.inf
    for trend, damped, seasonal in candidates:
        try:
            fitted = ETSModel(
                pd.Series(series), error="add", trend=trend, damped_trend=damped, seasonal=seasonal,
                seasonal_periods=period if seasonal else None,
            ).fit(disp=False)  # fmt: skip
        except (ValueError, np.linalg.LinAlgError):
            continue
        score = fitted.aicc if math.isfinite(fitted.aicc) else fitted.aic
        if score < best_score:
            best, best_score = fitted, score
    if best is None:
        raise ValueError("no exponential smoothing model fits this series")
    frame = best.get_prediction(start=len(series), end=len(series) + steps - 1).summary_frame(alpha=alpha)
    return frame["mean"].to_numpy(), frame["pi_lower"].to_numpy(), frame["pi_upper"].to_numpy()


def _arima(
    series: np.ndarray, period: int, steps: int, alpha: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    from statsmodels.tsa.arima.model import ARIMA

    best, best_score = None, math.inf
    seasonal = (1, 0, 0, period) if period else (0, 0, 0, 0)
    for order in ((1, 1, 1), (2, 1, 2), (1, 0, 1), (0, 1, 1)):
        try:
            fitted = ARIMA(series, order=order, seasonal_order=seasonal).fit()
        except (ValueError, np.linalg.LinAlgError):
            continue
        if fitted.aicc < best_score:
            best, best_score = fitted, fitted.aicc
    if best is None:
        raise ValueError("no ARIMA model fits this series")
    forecast = best.get_forecast(steps)
    bounds = np.asarray(forecast.conf_int(alpha=alpha))
    return np.asarray(forecast.predicted_mean), bounds[:, 0], bounds[:, 1]


def _seasonal_naive(
    series: np.ndarray, period: int, steps: int, width: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The last season repeated; intervals from the spread of the in-sample seasonal errors."""
    from scipy.stats import norm

    m = period or 1
    mean = np.array([series[len(series) - m + (h % m)] for h in range(steps)])
    errors = series[m:] - series[:-m]
    sigma = float(np.std(errors, ddof=1)) if len(errors) > 1 else 0.0
    k = np.floor(np.arange(steps) / m) + 1
    spread = norm.ppf(0.5 + width / 2) * sigma * np.sqrt(k)
    return mean, mean - spread, mean + spread
