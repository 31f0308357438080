"""EXPLAIN for DuckDB: measure each AI call's requests with plain SQL over its scope, call no model."""

from __future__ import annotations

import duckdb

from aifuncs._types import arrow_type
from aifuncs.planner import CallSite, EngineHooks, rewrite, split_statements
from aifuncs.planner._cost import CallEstimate, RequestCounts, estimate, measurable
from aifuncs.planner._rewrite import PROBE_ALIAS
from aifuncs.runtime import Runtime


def explain_calls(
    con: duckdb.DuckDBPyConnection, query: str, dialect: str, hooks: EngineHooks, runtime: Runtime
) -> list[CallEstimate]:
    estimates = []
    for number, statement in enumerate(split_statements(query, dialect), start=1):
        for planned in rewrite(statement, dialect, hooks, number=number):
            for site in planned.calls:
                provider = runtime.provider(site.call.endpoint)
                reuse = runtime.reuse(site.call)
                counts = _measure(con, site, reuse, runtime)
                estimates.append(
                    estimate(
                        number,
                        site,
                        counts,
                        reuse,
                        provider.options,
                        site.call.bulk_rows if site.bulk and site.call.bulk_rows else provider.batch_rows,
                        provider.returns_text,
                    )
                )
    return estimates


def _measure(
    con: duckdb.DuckDBPyConnection, site: CallSite, reuse: str | None, runtime: Runtime
) -> RequestCounts:
    if site.probe is None or site.request_type is None:
        return RequestCounts()
    probe, upper_bound = measurable(site.probe)
    if probe is None:
        return RequestCounts(upper_bound=upper_bound)
    scope = f"(SELECT {PROBE_ALIAS} AS r FROM ({probe}))"
    try:
        rows, requests, distinct, chars = con.execute(
            f"SELECT count(*), count(r), count(DISTINCT r), sum(length(CAST(r AS VARCHAR))) FROM {scope}"
        ).fetchall()[0]
        (distinct_chars,) = con.execute(
            f"SELECT sum(length(CAST(r AS VARCHAR))) FROM (SELECT DISTINCT r FROM {scope})"
        ).fetchall()[0]
        stored = 0
        if reuse == "store" and distinct:
            texts = [
                t
                for (t,) in con.execute(
                    f"SELECT to_json({{'v': r}})::VARCHAR FROM (SELECT DISTINCT r FROM {scope} WHERE r IS NOT NULL)"
                ).fetchall()
            ]
            stored = runtime.stored(site.call, arrow_type(site.request_type), texts)
    except duckdb.Error:
        return RequestCounts()  # a scope that only makes sense inside its query (e.g. correlated)
    return RequestCounts(rows, requests, distinct, stored, chars or 0, distinct_chars or 0, upper_bound)
