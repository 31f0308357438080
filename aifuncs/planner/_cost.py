"""EXPLAIN with cost: what each AI call of a query will send, and what it will cost, before any model call.

The engine measures each call site's requests (rows, distinct, already stored, size); this module turns
those counts and the endpoint's prices into an estimate, and renders it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import sqlglot
from sqlglot import exp

from aifuncs.governance.limits import pace
from aifuncs.planner._hooks import CallSite
from aifuncs.planner._reads import is_ai
from aifuncs.runtime._budget import price

CHARS_PER_TOKEN = 4.0  # the usual rule of thumb for English text with GPT-style tokenizers
DEFAULT_OUTPUT_TOKENS = 256  # per answer, when neither modelParameters nor the endpoint bounds it


@dataclass(frozen=True)
class RequestCounts:
    """What the engine measured over a call site's scope (None where it could not)."""

    rows: int | None = None
    requests: int | None = None  # non-NULL requests
    distinct: int | None = None
    stored: int = 0  # distinct requests whose answers are kept already
    chars: int | None = None  # text size of all non-NULL requests
    distinct_chars: int | None = None
    upper_bound: bool = False  # a filter with AI calls was left out: fewer rows may reach the call


@dataclass
class CallEstimate:
    statement: int
    call: str
    endpoint: str
    kind: str
    version: int
    path: str  # bulk | streaming
    reuse: str  # store | query | none
    rows: int | None
    requests: int | None
    distinct: int | None
    cached: int
    rows_to_send: int | None
    model_requests: int | None
    input_tokens: int | None
    output_tokens: int | None
    cost_usd: float | None
    notes: list[str] = field(default_factory=list)
    paced_minutes: float | None = None  # the least time the endpoint's rate limits allow these requests
    # An endpoint of several served entities: each one's name, kind, model, traffic_percentage, rows and
    # cost_usd (its share); the cost above is their weighted mix
    entities: list[dict[str, Any]] = field(default_factory=list)
    fallback: list[str] = field(default_factory=list)  # where a failed request is asked next, in order

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def estimate(
    statement: int,
    site: CallSite,
    counts: RequestCounts,
    reuse: str | None,
    options: Any,
    batch_rows: int,
    generates_text: bool,
) -> CallEstimate:
    call = site.call
    notes: list[str] = []
    if counts.requests is None:
        notes.append("rows unknown: the call's scope could not be measured apart from its query")
    if counts.upper_bound:
        notes.append("an upper bound: a filter with AI calls, which may pass fewer rows, was left out")
    if reuse is None:
        to_send = counts.requests
        chars = counts.chars
    else:
        to_send = None if counts.distinct is None else counts.distinct - counts.stored
        share = 1.0 if not counts.distinct else (to_send or 0) / counts.distinct
        chars = None if counts.distinct_chars is None else round(counts.distinct_chars * share)
    model_requests = None if to_send is None else math.ceil(to_send / max(1, batch_rows))

    input_tokens = output_tokens = None
    if generates_text and to_send is not None:
        input_tokens = math.ceil((chars or 0) / CHARS_PER_TOKEN)
        bound = (call.parameters or {}).get("max_tokens") or getattr(options, "max_tokens", None)
        per_answer = bound if isinstance(bound, int) else DEFAULT_OUTPUT_TOKENS
        if not isinstance(bound, int):
            notes.append(
                f"output tokens assume {DEFAULT_OUTPUT_TOKENS} per answer (set max_tokens to bound them)"
            )
        output_tokens = to_send * per_answer
        notes.append(f"input tokens estimated at {CHARS_PER_TOKEN:g} characters per token")

    cost = price(options, to_send, input_tokens, output_tokens)
    if cost is None and to_send:
        notes.append(
            "no prices on the endpoint (usd_per_1m_input_tokens, usd_per_1m_output_tokens, usd_per_1k_rows)"
        )
    paced = pace(
        call.rate_checks,
        model_requests,
        None if input_tokens is None else input_tokens + (output_tokens or 0),
    )
    if paced is not None and paced[0] > 0:
        notes.append(f"rate limited: ~{_duration(paced[0])} at {paced[1]}")
    return CallEstimate(
        paced_minutes=None if paced is None else round(paced[0], 3),
        statement=statement,
        call=site.text,
        endpoint=call.endpoint.name,
        kind=call.endpoint.kind,
        version=call.endpoint.version,
        path="bulk" if site.bulk else "streaming",
        reuse=reuse or "none",
        rows=counts.rows,
        requests=counts.requests,
        distinct=counts.distinct if reuse else None,
        cached=counts.stored,
        rows_to_send=to_send,
        model_requests=model_requests,
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        cost_usd=cost,
        notes=notes,
    )


def measurable(probe: str) -> tuple[str | None, bool]:
    """The probe made safe to run: no AI call may execute while measuring. Filter conjuncts that hold AI
    calls are dropped (the count becomes an upper bound: the second value); if AI calls remain anywhere
    else (a request built from another AI call, a join condition), None: it cannot be measured."""
    tree = sqlglot.parse_one(probe, read="duckdb")
    upper_bound = False
    for select in list(tree.find_all(exp.Select)):
        where = select.args.get("where")
        if where is None or not is_ai(where):
            continue
        kept = [c for c in where.this.flatten() if not is_ai(c)] if isinstance(where.this, exp.And) else []
        select.set("where", exp.Where(this=exp.and_(*kept)) if kept else None)
        upper_bound = True
    if is_ai(tree):
        return None, upper_bound
    return tree.sql("duckdb"), upper_bound


def render(estimates: list[CallEstimate]) -> str:
    if not estimates:
        return "No AI calls: the query runs without calling any model."
    lines = []
    total_cost = 0.0
    priced = False
    for number, e in enumerate(estimates, start=1):
        lines.append(f"AI call {number} (statement {e.statement}): {e.call}")
        if e.entities:
            lines.append(
                f"  endpoint     {e.endpoint} (v{e.version}, {len(e.entities)} served entities), {e.path} path"
            )
        else:
            lines.append(f"  endpoint     {e.endpoint} ({e.kind}, v{e.version}), {e.path} path")
        lines.extend(f"  entity       {_entity(entity)}" for entity in e.entities)
        if e.fallback:
            lines.append(
                f"  fallback     {' -> '.join(e.fallback)} (for failed requests only: not in the cost)"
            )
        lines.append(
            f"  rows         {_n(e.rows)} rows, {_n(e.requests)} non-NULL requests"
            + (f", {_n(e.distinct)} distinct, {_n(e.cached)} cached" if e.reuse != "none" else ", each sent")
        )
        lines.append(f"  will send    {_n(e.rows_to_send)} rows in {_n(e.model_requests)} requests")
        if e.input_tokens is not None:
            lines.append(f"  tokens       ~{_n(e.input_tokens)} in, ~{_n(e.output_tokens)} out")
        if e.cost_usd is not None:
            priced = True
            total_cost += e.cost_usd
            lines.append(f"  cost         ~${e.cost_usd:,.4f}")
        lines.extend(f"  note         {note}" for note in e.notes)
    if priced:
        lines.append(f"Estimated total: ~${total_cost:,.4f}")
    return "\n".join(lines)


def _entity(entity: dict[str, Any]) -> str:
    share = entity["traffic_percentage"]
    model = f" {entity['model']}" if entity.get("model") else ""
    cost = f", ~${entity['cost_usd']:,.4f}" if entity.get("cost_usd") is not None else ""
    routed = f"{_n(entity.get('rows'))} rows{cost}" if share else "fallback only"
    return f"{entity['name']} {share}% ({entity['kind']}{model}): {routed}"


def _duration(minutes: float) -> str:
    if minutes < 1:
        return f"{minutes * 60:.0f} s"
    if minutes < 120:
        return f"{minutes:.0f} min"
    return f"{minutes / 60:.1f} h"


def _n(value: int | None) -> str:
    return "?" if value is None else f"{value:,}"
