"""The pandas binding: AI functions on Series and DataFrames.

    df["body"].ai.classify(["bug", "billing", "other"])
    df.ai.query("churn-model", columns=["tenure", "plan", "spend"])
    df.ai.sql("SELECT id, ai_summarize(body) AS summary FROM df")

Each call becomes one SQL query over the frame's Arrow columns on a DuckDB connection of this thread, and
goes through the planner and runtime like any query: the same batching, concurrency, de-duplication,
cache, budgets and progress. No Python runs per row. Results are Arrow-backed and keep the input's index.
The accessors are registered when `aifuncs` is imported.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, Literal

import duckdb
import pandas as pd
import pyarrow as pa
from sqlglot import exp

from aifuncs._fork import ProcessLocal
from aifuncs.engines.duckdb import connect, session_of, typed_error
from aifuncs.engines.duckdb import sql as run_sql
from aifuncs.errors import ArgumentError
from aifuncs.functions import FunctionSpec, get_spec
from aifuncs.governance import current
from aifuncs.session import RequestOptions, SpendingLimits, merge

__all__ = ["AiDataFrameAccessor", "AiSeriesAccessor", "call", "query"]

DtypeBackend = Literal["pyarrow", "numpy_nullable"]
_FRAME = "__aifuncs_frame"
_local = ProcessLocal()  # per thread and process: a forked worker must not use its parent's


def _connection() -> duckdb.DuckDBPyConnection:
    # One per thread: a connection runs one query at a time, and pandas code may use threads. It acts as
    # the process's identity, and a new one is made when that changes (another AIFUNCS_TOKEN or home).
    identity = current()
    con: duckdb.DuckDBPyConnection | None = getattr(_local.values, "con", None)
    if con is None or getattr(_local.values, "identity", None) is not identity:
        if con is not None:
            con.close()
        con = _local.values.con = connect()
        _local.values.identity = identity
        con.execute("SET enable_progress_bar = false")  # aifuncs' own progress goes to stderr
    return con


def call(
    function: str,
    *columns: pd.Series | Any,
    dtype_backend: DtypeBackend = "pyarrow",
    limits: SpendingLimits | None = None,
    options: RequestOptions | None = None,
    max_requests: int | None = None,
    max_tokens: int | None = None,
    max_cost_usd: float | None = None,
    progress: bool | None = None,
    **arguments: Any,
) -> pd.Series | Any:
    """Call the AI function `function` (SQL name, e.g. "ai_classify") on Series; returns a Series with the
    first Series' index, or a single value for an aggregate (ai_agg, ai_summarize_agg).

    `columns` fill the function's column parameters in order (a constant may stand for one, e.g. the
    other text of ai_similarity); `arguments` are its other parameters, by their SQL names or in
    snake_case (`multi_label` for `multiLabel`). `limits` (or `max_*`) limit what the call may spend and
    `options` (or `progress`) say how its requests go, as in `aifuncs.sql`.
    """
    spec = _spec(function)
    series = [c for c in columns if isinstance(c, pd.Series)]
    if not series:
        raise ArgumentError(f"{spec.name} needs at least one pandas Series to work on.")
    first = series[0]
    for other in series[1:]:
        if len(other) != len(first):
            raise ArgumentError(
                f"{spec.name}: the Series have {len(first):,} and {len(other):,} rows; give Series of one length."
            )
    data: dict[str, pa.Array | pa.ChunkedArray] = {}
    values: list[exp.Expr] = []
    for i, column in enumerate(columns):
        if isinstance(column, pd.Series):
            data[f"c{i}"] = _arrow(column)
            values.append(exp.column(f"c{i}"))
        else:
            values.append(_literal(column))
    expression = _call_expression(spec, values, arguments)
    budget = _budget(limits, options, max_requests, max_tokens, max_cost_usd, progress)
    result = _select(pa.table(data), [expression], budget).column(0)
    if spec.aggregate:
        return result[0].as_py()
    return _series(result, first.index, first.name, dtype_backend)


def query(
    endpoint: str,
    data: pd.DataFrame | pd.Series,
    *,
    columns: str | Sequence[str] | None = None,
    return_type: str | None = None,
    fail_on_error: bool | None = None,
    model_parameters: dict[str, Any] | None = None,
    response_format: str | dict[str, Any] | None = None,
    cache: bool | None = None,
    dtype_backend: DtypeBackend = "pyarrow",
    limits: SpendingLimits | None = None,
    options: RequestOptions | None = None,
    max_requests: int | None = None,
    max_tokens: int | None = None,
    max_cost_usd: float | None = None,
    progress: bool | None = None,
    **sql_names: Any,
) -> pd.Series:
    """`ai_query(endpoint, request, ...)` per row. A Series is the request itself; a DataFrame's
    `columns` (default: all) become a STRUCT request whose fields are the model's inputs, by name; one column's name
    (not in a list) makes its values the request, as `df[name]` selects them.
    Options take their SQL names too (`returnType`, `failOnError`, `modelParameters`, `responseFormat`)."""
    given: dict[str, Any] = {
        "return_type": return_type,
        "fail_on_error": fail_on_error,
        "model_parameters": model_parameters,
        "response_format": response_format,
    }
    for key, value in sql_names.items():
        snake = _SNAKE_CASE.get(key)
        if snake is None:
            accepted = ", ".join(f"{sql_name} ({snake_name})" for sql_name, snake_name in _SNAKE_CASE.items())
            raise ArgumentError(
                f"ai_query has no option {key!r}. Options: {accepted}, cache, columns, dtype_backend,"
                " limits, options, max_requests, max_tokens, max_cost_usd, progress."
            )
        if given[snake] is not None:
            raise ArgumentError(f"ai_query: {key!r} and {snake!r} are the same option; give it once.")
        given[snake] = value
    return_type, fail_on_error, model_parameters, response_format = given.values()
    if isinstance(data, pd.DataFrame) and columns is not None and not pd.api.types.is_list_like(columns):
        # One label selects one column as pandas' `df[label]` does: its values are the request.
        if columns not in data.columns:
            raise ArgumentError(
                f"ai_query: the DataFrame has no column {columns!r}; it has {', '.join(map(repr, data.columns))}."
            )
        data = data[columns].rename(endpoint)  # named as every DataFrame's answers are: after the endpoint
    if isinstance(data, pd.Series):
        table = pa.table({"c0": _arrow(data)})
        request: exp.Expr = exp.column("c0")
        name = data.name
    else:
        labels = list(columns if columns is not None else data.columns)
        missing = [c for c in labels if c not in data.columns]
        if missing:
            raise ArgumentError(
                f"ai_query: the DataFrame has no column {', '.join(map(repr, missing))}; it has"
                f" {', '.join(map(repr, data.columns))}."
            )
        names = [str(c) for c in labels]  # the request's field names: the model's input names
        table = pa.table({n: _arrow(data[c]) for n, c in zip(names, labels, strict=True)})
        request = exp.func(
            "struct_pack",
            *[exp.PropertyEQ(this=exp.to_identifier(c, quoted=True), expression=exp.column(c, quoted=True))
              for c in names],
        )  # fmt: skip
        name = endpoint
    arguments = {
        "returnType": return_type,
        "failOnError": fail_on_error,
        "modelParameters": model_parameters,
        "responseFormat": json.dumps(response_format)
        if isinstance(response_format, dict)
        else response_format,
        "cache": cache,
    }
    expression = _call_expression(_spec("ai_query"), [exp.Literal.string(endpoint), request], arguments)
    budget = _budget(limits, options, max_requests, max_tokens, max_cost_usd, progress)
    result = _select(table, [expression], budget)
    return _series(result.column(0), data.index, name, dtype_backend)


# ai_query's options by their SQL names, as `query` also accepts them.
_SNAKE_CASE = {
    "returnType": "return_type",
    "failOnError": "fail_on_error",
    "modelParameters": "model_parameters",
    "responseFormat": "response_format",
}


def sql(
    query_text: str,
    frames: dict[str, pd.DataFrame],
    *,
    dialect: str = "duckdb",
    dtype_backend: DtypeBackend = "pyarrow",
    **budget: Any,
) -> pd.DataFrame:
    """Run SQL with AI functions over DataFrames, each visible under its name; returns a DataFrame."""
    con = _connection()
    for name, frame in frames.items():
        con.register(name, pa.Table.from_pandas(frame, preserve_index=False))
    try:
        relation = run_sql(con, query_text, dialect=dialect, **budget)
        table = pa.table({}) if relation is None else relation.to_arrow_table()
    finally:
        for name in frames:
            con.unregister(name)
        session_of(con).runtime.usage.query_done()  # streamed requests ran while the rows were fetched
    return _frame(table, dtype_backend)


@pd.api.extensions.register_series_accessor("ai")
class AiSeriesAccessor:
    """AI functions on a Series of texts (or requests): `s.ai.classify([...])`, `s.ai.embed()`..."""

    def __init__(self, series: pd.Series) -> None:
        self._series = series

    def query(self, endpoint: str, **options: Any) -> pd.Series:
        """ai_query per value: see `aifuncs.pandas.query` for the options."""
        return query(endpoint, self._series, **options)

    def call(self, function: str, *args: Any, **kwargs: Any) -> pd.Series | Any:
        """Any AI function by its SQL name, your own included: `s.ai.call("ai_tone", endpoint="x")`."""
        return call(function, self._series, *args, **kwargs)

    def analyze_sentiment(self, **kwargs: Any) -> pd.Series:
        return call("ai_analyze_sentiment", self._series, **kwargs)

    def classify(self, labels: Sequence[str] | dict[str, str], **kwargs: Any) -> pd.Series:
        return call("ai_classify", self._series, labels=labels, **kwargs)

    def extract(self, labels: Sequence[str] | dict[str, Any], **kwargs: Any) -> pd.Series:
        return call("ai_extract", self._series, labels=labels, **kwargs)

    def summarize(self, max_words: int | None = None, **kwargs: Any) -> pd.Series:
        return call("ai_summarize", self._series, max_words=max_words, **kwargs)

    def translate(self, to_lang: str, **kwargs: Any) -> pd.Series:
        return call("ai_translate", self._series, to_lang=to_lang, **kwargs)

    def fix_grammar(self, **kwargs: Any) -> pd.Series:
        return call("ai_fix_grammar", self._series, **kwargs)

    def gen(self, **kwargs: Any) -> pd.Series:
        """Each value is a prompt; the answer is the model's text."""
        return call("ai_gen", self._series, **kwargs)

    def mask(self, labels: Sequence[str], **kwargs: Any) -> pd.Series:
        return call("ai_mask", self._series, labels=labels, **kwargs)

    def filter(self, predicate: str, **kwargs: Any) -> pd.Series:
        """True where the text satisfies `predicate`: use as a boolean mask, `df[df.body.ai.filter(...)]`."""
        return call("ai_filter", self._series, predicate=predicate, **kwargs)

    def parse_document(self, **kwargs: Any) -> pd.Series:
        """A Series of file contents (bytes: PDFs, images) -> each one's parse (ai_parse_document)."""
        return self.call("ai_parse_document", **kwargs)

    def embed(self, **kwargs: Any) -> pd.Series:
        return call("ai_embed", self._series, **kwargs)

    def similarity(self, other: pd.Series | str, **kwargs: Any) -> pd.Series:
        """Cosine similarity of each text with `other`: a Series (aligned on the index) or one text."""
        if isinstance(other, pd.Series):
            other = other.reindex(self._series.index)
        return call("ai_similarity", self._series, other, **kwargs)

    def agg(self, instruction: str, **kwargs: Any) -> Any:
        """One answer for the whole Series (ai_agg); per group: `df.ai.agg("body", ..., by="topic")`."""
        return call("ai_agg", self._series, instruction=instruction, **kwargs)

    def summarize_agg(self, **kwargs: Any) -> Any:
        return call("ai_summarize_agg", self._series, **kwargs)


@pd.api.extensions.register_dataframe_accessor("ai")
class AiDataFrameAccessor:
    """AI functions on a DataFrame: `df.ai.query(endpoint, columns=[...])`, `df.ai.sql("... FROM df")`."""

    def __init__(self, frame: pd.DataFrame) -> None:
        self._frame = frame

    def query(self, endpoint: str, columns: str | Sequence[str] | None = None, **options: Any) -> pd.Series:
        """ai_query per row: one column's values (a name) as the request, or the `columns` (a list; default:
        all) packed into a STRUCT request."""
        return query(endpoint, self._frame, columns=columns, **options)

    def sql(self, query_text: str, *, name: str = "df", **options: Any) -> pd.DataFrame:
        """SQL with AI functions over this DataFrame, visible as `df` (or `name`)."""
        return sql(query_text, {name: self._frame}, **options)

    def agg(
        self, column: str, instruction: str | None = None, *, by: str | Sequence[str], **kwargs: Any
    ) -> pd.Series:
        """ai_agg (or ai_summarize_agg, without an instruction) of `column` per group of `by`."""
        keys = [by] if isinstance(by, str) else list(by)
        function = _spec("ai_agg" if instruction is not None else "ai_summarize_agg")
        arguments = {"instruction": instruction} if instruction is not None else {}
        dtype_backend = kwargs.pop("dtype_backend", "pyarrow")
        budget = _budget(
            *(kwargs.pop(k, None) for k in ("limits", "options", "max_requests", "max_tokens", "max_cost_usd",
                                             "progress"))
        )  # fmt: skip
        table = pa.table({**{f"k{i}": _arrow(self._frame[k]) for i, k in enumerate(keys)},
                          "v": _arrow(self._frame[column])})  # fmt: skip
        group: list[exp.Expr] = [exp.column(f"k{i}") for i in range(len(keys))]
        answer = _call_expression(function, [exp.column("v")], {**arguments, **kwargs})
        result = _select(table, [*group, answer], budget, group_by=group)
        index = (
            pd.Index(result.column(0).to_pandas(), name=keys[0])
            if len(keys) == 1
            else pd.MultiIndex.from_arrays(
                [result.column(i).to_pandas() for i in range(len(keys))], names=keys
            )
        )
        return _series(result.column(len(keys)), index, column, dtype_backend)


def _spec(function: str) -> FunctionSpec:
    spec = get_spec(function) or get_spec("ai_" + function)
    if spec is None:
        raise ArgumentError(f"Unknown AI function {function!r}.")
    if spec.kind == "table":
        raise ArgumentError(f"{spec.name} is a table function: call it from SQL (df.ai.sql).")
    return spec


def _call_expression(spec: FunctionSpec, values: list[exp.Expr], arguments: dict[str, Any]) -> exp.Expr:
    """The SQL call: column parameters positionally, the others by name (`name => value`)."""
    columns = [p for p in spec.params if p.kind == "column"] if spec.name != "ai_query" else spec.params[:2]
    if len(values) > len(columns):
        raise ArgumentError(
            f"{spec.name} takes {len(columns)} column arguments, not {len(values)}: {spec.signature}."
        )
    named = []
    for key, value in arguments.items():
        if value is None:
            continue  # the function's default
        param = spec.param(key) or spec.param(key.replace("_", ""))
        if param is None or param in columns:
            choices = ", ".join(p.name for p in spec.params if p not in columns)
            raise ArgumentError(f"{spec.name} has no option {key!r}; it takes {choices}.")
        named.append(exp.Kwarg(this=exp.var(param.name), expression=_literal(value)))
    return exp.Anonymous(this=spec.name, expressions=[*values, *named])


def _literal(value: Any) -> exp.Expr:
    """A Python value as a SQL constant: lists as lists, dicts as structs, never text spliced into SQL."""
    if isinstance(value, dict):
        return exp.Struct(
            expressions=[
                exp.PropertyEQ(this=exp.Literal.string(str(k)), expression=_literal(v))
                for k, v in value.items()
            ]
        )
    if isinstance(value, list | tuple):
        return exp.Array(expressions=[_literal(v) for v in value])
    return exp.convert(value)


def _budget(
    limits: SpendingLimits | None,
    options: RequestOptions | None,
    max_requests: int | None,
    max_tokens: int | None,
    max_cost_usd: float | None,
    progress: bool | None,
) -> dict[str, Any]:
    """The keywords of `aifuncs.sql` a call passes on: its options objects, the keywords folded in."""
    return {
        "limits": merge(
            SpendingLimits,
            limits,
            max_requests=max_requests,
            max_tokens=max_tokens,
            max_cost_usd=max_cost_usd,
        ),
        "options": merge(RequestOptions, options, progress=progress),
    }


def _select(
    table: pa.Table, columns: list[exp.Expr], budget: dict[str, Any], group_by: list[exp.Expr] | None = None
) -> pa.Table:
    select = exp.select(*columns).from_(_FRAME)
    if group_by:
        select = select.group_by(*group_by).order_by(*group_by)
    con = _connection()
    con.register(_FRAME, table)
    try:
        try:
            relation = run_sql(con, select.sql("duckdb"), origin="pandas", **budget)
            assert relation is not None
            return relation.to_arrow_table()
        except duckdb.Error as error:  # a model's failure inside DuckDB: raised as the typed error it is
            typed = typed_error(error)
            if typed is None:
                raise
            raise typed from error
    finally:
        con.unregister(_FRAME)
        session_of(con).runtime.usage.query_done()  # streamed requests ran while the rows were fetched


def _arrow(series: pd.Series) -> pa.Array | pa.ChunkedArray:
    values = series.array
    if hasattr(values, "__arrow_array__"):  # Arrow-backed (pandas 3 strings, ArrowDtype) or masked: no copy
        converted: pa.Array | pa.ChunkedArray = values.__arrow_array__()
        return converted
    return pa.Array.from_pandas(series)


def _series(values: pa.ChunkedArray, index: pd.Index, name: Any, dtype_backend: DtypeBackend) -> pd.Series:
    if dtype_backend == "pyarrow":
        return pd.Series(pd.arrays.ArrowExtensionArray(values), index=index, name=name, copy=False)
    return pd.Series(values.to_pandas(), name=name).set_axis(index)


def _frame(table: pa.Table, dtype_backend: DtypeBackend) -> pd.DataFrame:
    return table.to_pandas(types_mapper=pd.ArrowDtype if dtype_backend == "pyarrow" else None)
