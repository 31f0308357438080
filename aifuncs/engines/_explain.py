"""EXPLAIN for DuckDB: measure each AI call's requests with plain SQL over its scope, call no model."""

from __future__ import annotations

import math
from typing import Any

import duckdb

from aifuncs._endpoint import Endpoint
from aifuncs._types import arrow_type
from aifuncs.planner import CallSite, EngineHooks, rewrite, split_statements
from aifuncs.planner._cost import CallEstimate, RequestCounts, estimate, measurable
from aifuncs.planner._rewrite import PROBE_ALIAS
from aifuncs.runtime import CallSpec, Runtime


def explain_calls(
    con: duckdb.DuckDBPyConnection, query: str, dialect: str, hooks: EngineHooks, runtime: Runtime
) -> list[CallEstimate]:
    estimates = []
    for number, statement in enumerate(split_statements(query, dialect), start=1):
        for planned in rewrite(statement, dialect, hooks, number=number):
            for site in planned.calls:
                reuse = runtime.reuse(site.call)
                counts = _measure(con, site, reuse, runtime)
                estimates.append(_estimate(number, site, counts, reuse, runtime))
    return estimates


def _estimate(
    number: int, site: CallSite, counts: RequestCounts, reuse: str | None, runtime: Runtime
) -> CallEstimate:
    """The call's estimate; over several served entities, each entity's share of the rows at its own prices
    and batch size, summed by the route weights, and where failed requests go next."""
    endpoint = site.call.endpoint

    def one(view: Endpoint, bulk_rows: int | None) -> tuple[CallEstimate, int]:
        provider = runtime.provider(view)
        rows = bulk_rows if site.bulk and bulk_rows else provider.batch_rows
        made = estimate(number, site, counts, reuse, provider.options, rows, provider.returns_text)
        return made, rows

    whole, _ = one(endpoint, site.call.bulk_rows)
    whole.fallback = fallback_steps(site.call)
    if not endpoint.entities:
        return whole
    to_send = whole.rows_to_send
    requests = outputs = 0
    costs: list[float | None] = []
    unpriced: list[str] = []
    for entity in endpoint.entities:
        view = endpoint.served_entity(entity.name)  # each entity is asked in its own request size
        made, batch_rows = one(view, runtime.provider(view).bulk_rows)
        weight = entity.traffic_percentage / 100
        rows = None if to_send is None else round(to_send * weight)
        cost = None if made.cost_usd is None else made.cost_usd * weight
        if weight:
            requests += math.ceil((rows or 0) / max(1, batch_rows))
            outputs += round((made.output_tokens or 0) * weight)
            costs.append(cost)
            if cost is None and to_send:
                unpriced.append(entity.name)
        whole.entities.append(
            {"name": entity.name, "kind": entity.kind, "model": _model(entity.options),
             "traffic_percentage": entity.traffic_percentage, "rows": rows if weight else 0,
             "cost_usd": cost if weight else None}
        )  # fmt: skip
    whole.notes = [n for n in whole.notes if not n.startswith("no prices")]
    if unpriced and len(unpriced) < len(costs):
        whole.notes.append(f"no prices on served entities {', '.join(unpriced)}: the cost is left out")
    elif unpriced:
        whole.notes.append(
            "no prices on the served entities (usd_per_1m_input_tokens, usd_per_1m_output_tokens,"
            " usd_per_1k_rows)"
        )
    whole.cost_usd = None if unpriced or None in costs else sum(c for c in costs if c is not None)
    whole.model_requests = None if to_send is None else requests
    whole.output_tokens = None if whole.output_tokens is None else outputs
    return whole


def fallback_steps(call: CallSpec) -> list[str]:
    """Where a request its served entity failed is asked next, in order: the endpoint's other entities,
    then the fallback endpoint bound for this caller (and its own fallbacks)."""
    steps: list[str] = []
    at: CallSpec | None = call
    while at is not None:
        if at is not call:
            model = _model(at.endpoint.options)
            several = f", {len(at.endpoint.entities)} served entities" if at.endpoint.entities else ""
            steps.append(
                f"endpoint {at.endpoint.name} ({at.endpoint.kind}{' ' + model if model else ''}{several})"
            )
        if at.fallback and at.endpoint.split:
            steps.append(f"the other entities of {at.endpoint.name} in list order")
        at = at.fallback_call if at.fallback else None
    return steps


def _model(options: dict[str, Any]) -> str:
    """What an entity runs, in a word: its model, model URI, file, URL or function."""
    for key in ("model", "model_uri", "model_path", "url", "function"):
        if options.get(key):
            return str(options[key])
    return ""


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
