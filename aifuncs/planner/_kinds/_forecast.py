"""ai_forecast as SQL: one forecast call per group, its future steps unnested into rows.

    SELECT * FROM ai_forecast(TABLE(sales), horizon => '2026-12-31', time_col => 'day', value_col => 'revenue',
                              group_col => 'store')

becomes (in the engine's SQL) a query that groups the history, sends each group's points to the forecast
endpoint as one `ai_query` (planned like any other: governed, counted, concurrent, failing per group), and
turns each answer's steps into rows: the time, the groups, `revenue_forecast`, `revenue_upper`,
`revenue_lower`, and `error_message` (NULL, or why the group has no forecast, on its one row).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import sqlglot
from sqlglot import exp

from aifuncs.errors import ArgumentError
from aifuncs.functions import FunctionSpec
from aifuncs.planner._args import constant, endpoint_literal, json_text, probe_type
from aifuncs.planner._dialects import reader, writer
from aifuncs.planner._hooks import EngineHooks
from aifuncs.planner._kinds._registry import FUNCTION_META, table_function
from aifuncs.providers.forecast import check_settings

ANSWER = "__aifuncs_forecast"

# The history's time type (DuckDB DDL, as an engine describes it) -> how Databricks spells it.
_TIME_TYPES = {"DATE": "DATE", "TIMESTAMP": "TIMESTAMP_NTZ", "TIMESTAMP WITH TIME ZONE": "TIMESTAMP"}


@table_function("ai_forecast")
def expand_forecast(
    call: exp.Anonymous, spec: FunctionSpec, args: dict[str, exp.Expr], hooks: EngineHooks
) -> exp.Expr:
    """FROM ai_forecast(TABLE(t), ...): a query that sends each group's history to the forecast endpoint
    and unnests the answers."""
    observed = args["observed"]
    inner = (
        observed.expressions[0]
        if isinstance(observed, exp.Anonymous) and observed.name.upper() == "TABLE" and observed.expressions
        else None
    )
    if isinstance(inner, exp.Column):
        source = inner.sql(writer(hooks.dialect))
    elif isinstance(inner, exp.Query):
        source = f"({inner.sql(writer(hooks.dialect))})"
    else:
        raise ArgumentError(
            "ai_forecast reads its history from TABLE(name) or TABLE(SELECT ...), e.g."
            " ai_forecast(TABLE(sales), horizon => '2026-12-31', time_col => 'day', value_col => 'revenue')."
        )
    given = {
        p.name: constant(spec, p.name, args.get(p.name), hooks) for p in spec.params if p.kind == "constant"
    }
    time_col = given["time_col"]
    if not isinstance(time_col, str) or not time_col:
        raise ArgumentError(f"ai_forecast: time_col is a column name, not {time_col!r}.")
    horizon = given["horizon"]
    if horizon is None or isinstance(horizon, bool | dict | list):
        raise ArgumentError(f"ai_forecast: horizon is a date or timestamp, not {horizon!r}.")
    width = given["prediction_interval_width"]
    if not isinstance(width, int | float) or not 0 < width < 1:
        raise ArgumentError(f"ai_forecast: prediction_interval_width is between 0 and 1, not {width!r}.")
    check_settings(str(given["frequency"] or "auto"), json_text(given["parameters"]) or "{}")
    forecast = Forecast(
        observed=source,
        time_col=time_col,
        value_cols=names(given["value_col"], "value_col", True),
        group_cols=names(given["group_col"], "group_col", False),
        parameters={
            "horizon": str(horizon),
            "prediction_interval_width": float(width),
            "frequency": str(given["frequency"] or "auto"),
            "seed": given["seed"],
            "parameters": json_text(given["parameters"]) or "{}",
        },
        endpoint=endpoint_literal(spec, args, hooks, "forecast").this,
    )
    rows = exp.Subquery(this=inner.copy()) if isinstance(inner, exp.Query) else exp.to_table(source)
    history = exp.select(exp.column(time_col, quoted=True)).from_(rows)
    described = probe_type(history.sql(writer(hooks.dialect)), hooks)
    return forecast_query(forecast, time_type(described, time_col), hooks.dialect)


@dataclass(frozen=True)
class Forecast:
    observed: str  # the history: a table's name or a query, in the engine's SQL
    time_col: str
    value_cols: tuple[str, ...]
    group_cols: tuple[str, ...]
    parameters: dict[str, Any]  # horizon, prediction_interval_width, frequency, seed, parameters
    endpoint: str


def time_type(ddl: str | None, column: str) -> str:
    found = _TIME_TYPES.get((ddl or "").upper())
    if found is None:
        raise ArgumentError(
            f"ai_forecast: time_col {column!r} is {ddl or 'not a column of the input'}; it must be a DATE or"
            " TIMESTAMP column (CAST it in TABLE(SELECT ...))."
        )
    return found


def names(value: Any, argument: str, required: bool) -> tuple[str, ...]:
    """A column name or an array of them."""
    found = (value,) if isinstance(value, str) else tuple(value) if isinstance(value, list | tuple) else ()
    found = tuple(v for v in found if isinstance(v, str) and v)
    if required and not found or (value not in (None, "") and not found):
        raise ArgumentError(f"ai_forecast: {argument} is a column name or an array of them, not {value!r}.")
    return found


def forecast_query(forecast: Forecast, time_ddl: str, dialect: str) -> exp.Expr:
    """The query that answers `forecast`, as a tree read in the engine's dialect."""
    spark = dialect != "duckdb"

    def ident(name: str) -> str:
        return exp.to_identifier(name, quoted=True).sql("spark" if spark else "duckdb")

    def text(value: str) -> str:
        return exp.Literal.string(value).sql("duckdb")

    fields = ", ".join(
        [f"`{forecast.time_col}`: {time_ddl}"]
        + [f"`{v}_{part}`: DOUBLE" for v in forecast.value_cols for part in ("forecast", "upper", "lower")]
    )
    return_type = text(f"ARRAY<STRUCT<{fields}>>")
    point_parts = [("t", ident(forecast.time_col))] + [
        (v, f"CAST({ident(v)} AS DOUBLE)") for v in forecast.value_cols
    ]
    settings = [(k, v) for k, v in forecast.parameters.items() if v is not None]

    def struct(parts: list[tuple[str, str]]) -> str:
        if spark:
            return "named_struct(" + ", ".join(f"{text(k)}, {v}" for k, v in parts) + ")"
        return "{" + ", ".join(f"{text(k)}: {v}" for k, v in parts) + "}"

    def constant(value: Any) -> str:
        return text(value) if isinstance(value, str) else repr(value)

    points = f"{'collect_list' if spark else 'list'}({struct(point_parts)})"
    arrow = "=>" if spark else ":="
    call = (
        f"ai_query({text(forecast.endpoint)}, {struct([('points', points)])}, returnType {arrow} {return_type},"
        f" failOnError {arrow} false, modelParameters {arrow} {struct([(k, constant(v)) for k, v in settings])})"
    )
    groups = [ident(g) for g in forecast.group_cols]
    grouped = (
        f"SELECT {''.join(g + ', ' for g in groups)}{call} AS {ANSWER} FROM {forecast.observed} AS __aifuncs_observed"
        + (f" GROUP BY {', '.join(groups)}" if groups else "")
    )
    step = "__aifuncs_step"
    columns = [f"{step}.{ident(forecast.time_col)} AS {ident(forecast.time_col)}"] + [
        f"__aifuncs_g.{g}" for g in groups
    ]
    columns += [
        f"{step}.{ident(f'{v}_{part}')} AS {ident(f'{v}_{part}')}"
        for v in forecast.value_cols
        for part in ("forecast", "upper", "lower")
    ]
    columns.append(f"__aifuncs_g.{ANSWER}.errorMessage AS error_message")
    if spark:
        rows = (
            f"SELECT {', '.join(columns)} FROM ({grouped}) AS __aifuncs_g"
            f" LATERAL VIEW OUTER explode(__aifuncs_g.{ANSWER}.result) __aifuncs_u AS {step}"
        )
    else:  # a failed group keeps one row, its error in error_message
        rows = (
            f"SELECT {', '.join(columns)} FROM ({grouped}) AS __aifuncs_g LEFT JOIN LATERAL"
            f" (SELECT unnest(__aifuncs_g.{ANSWER}.result) AS {step}) AS __aifuncs_u ON TRUE"
        )
    tree = sqlglot.parse_one(rows, read=reader("databricks" if spark else "duckdb"))
    for node in tree.find_all(exp.Anonymous):
        if node.name.lower() == "ai_query":
            node.meta[FUNCTION_META] = "ai_forecast"  # the usage log names the function the user called
    return tree
