"""Usage figures for the UI, from the rollups only (`runtime/_rollups.py`), seen as one principal: an admin
reads all; anyone else its own requests and those of the endpoints it manages (`governance/visibility.py`'s
rule, at the rollups' grain: a bucket that began before the principal or the endpoint of its name was made is
an earlier incarnation's and is left out). Costs use each endpoint's prices as they are now."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

from aifuncs.runtime._budget import price
from aifuncs.runtime._rollups import Rollups, Scope, percentile
from aifuncs.server.ui._web import Me

__all__ = [
    "Totals",
    "breakdown",
    "endpoint_totals",
    "entity_breakdown",
    "entity_series",
    "hour_floor",
    "scope_of",
    "series",
]


@dataclass
class Totals:
    requests: int = 0
    errors: int = 0
    rows: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    latency_ms: float = 0.0
    cost_usd: float | None = None
    fallbacks: int = 0  # requests a fallback answered (usage label `fallback_from`)
    histogram: dict[int, int] = field(default_factory=dict)

    @property
    def tokens(self) -> int:
        return self.input_tokens + self.output_tokens

    @property
    def p50(self) -> float | None:
        return percentile(self.histogram, 0.5)

    @property
    def mean_ms(self) -> float | None:
        return self.latency_ms / self.requests if self.requests else None


def hour_floor(hours_ago: int) -> str:
    return (datetime.now(UTC) - timedelta(hours=hours_ago)).strftime("%Y-%m-%dT%H")


def _after(first_ts: str, made: datetime | None) -> bool:
    return made is None or datetime.fromisoformat(first_ts) >= made


def _prices(me: Me) -> dict[str, SimpleNamespace]:
    return {e.name: SimpleNamespace(**e.options) for e in me.catalog.list()}


def _cost(prices: dict[str, SimpleNamespace], endpoint: str, rows: int, inp: int, out: int) -> float | None:
    options = prices.get(endpoint)
    return None if options is None else price(options, rows, inp, out)


def _add_cost(totals: Totals, cost: float | None) -> None:
    if cost is not None:
        totals.cost_usd = (totals.cost_usd or 0.0) + cost


def endpoint_totals(me: Me, rollups: Rollups, hours: int = 24) -> dict[str, Totals]:
    """Per endpoint the principal manages (an admin: all), its figures over the last `hours`."""
    managed = me.catalog.managed()
    since = hour_floor(hours)
    prices = _prices(me)
    found: dict[str, Totals] = defaultdict(Totals)
    for h in rollups.hourly(since, None if me.principal.admin else managed):
        if not me.principal.admin and not _after(h.first_ts, managed.get(h.endpoint)):
            continue
        t = found[h.endpoint]
        t.requests += h.requests
        t.errors += h.requests if h.status_class != "2xx" else 0
        t.rows += h.rows
        t.input_tokens += h.input_tokens
        t.output_tokens += h.output_tokens
        t.latency_ms += h.latency_ms
    for (_, endpoint), histogram in rollups.latency(since, found).items():
        for bucket, count in histogram.items():
            found[endpoint].histogram[bucket] = found[endpoint].histogram.get(bucket, 0) + count
    for endpoint, t in found.items():
        t.cost_usd = _cost(prices, endpoint, t.rows, t.input_tokens, t.output_tokens)
    return dict(found)


def series(me: Me, rollups: Rollups, endpoint: str, hours: int) -> dict[str, Any]:
    """Per hour (UTC) of one endpoint the principal manages: requests, tokens, latency p50 and p99, errors by
    status class; columns for uPlot (x in epoch seconds)."""
    made = me.catalog.managed().get(endpoint)
    since = hour_floor(hours - 1)
    start = datetime.strptime(since, "%Y-%m-%dT%H").replace(tzinfo=UTC)
    slots = [start + timedelta(hours=i) for i in range(hours)]
    index = {s.strftime("%Y-%m-%dT%H"): i for i, s in enumerate(slots)}
    requests, tokens, e4, e5 = ([0] * hours for _ in range(4))
    for h in rollups.hourly(since, [endpoint]):
        i = index.get(h.hour)
        if i is None or not (me.principal.admin or _after(h.first_ts, made)):
            continue
        requests[i] += h.requests
        tokens[i] += h.input_tokens + h.output_tokens
        if h.status_class == "4xx":
            e4[i] += h.requests
        elif h.status_class == "5xx":
            e5[i] += h.requests
    p50: list[float | None] = [None] * hours
    p99: list[float | None] = [None] * hours
    for (hour, _), histogram in rollups.latency(since, [endpoint]).items():
        i = index.get(hour)
        if i is not None and requests[i]:
            p50[i], p99[i] = percentile(histogram, 0.5), percentile(histogram, 0.99)
    return {
        "x": [int(s.timestamp()) for s in slots],
        "requests": requests,
        "tokens": tokens,
        "p50": p50,
        "p99": p99,
        "errors_4xx": e4,
        "errors_5xx": e5,
    }


def scope_of(me: Me, *, mine: bool) -> Scope:
    """The buckets the principal may read (`mine`: only its own requests): an admin all; anyone its own
    requests since it was made and those of the endpoints it manages since each was made."""
    own = Scope(requester=me.name, requester_since=me.principal.created_at)
    if mine:
        return own
    if me.principal.admin:
        return Scope(everything=True)
    return Scope(requester=me.name, requester_since=me.principal.created_at, endpoints=me.catalog.managed())


def breakdown(
    me: Me, rollups: Rollups, days: int, by: str, *, mine: bool, endpoint: str | None = None
) -> list[tuple[str, Totals]]:
    """The last `days` (UTC) the principal may read, of `endpoint` (None: all), summed by endpoint, user, group
    (a request counts once in each group of its requester) or day; largest first (days in order). The
    rollups sum per key and endpoint in SQL; each sum is priced at its endpoint's prices."""
    since = (datetime.now(UTC) - timedelta(days=days - 1)).strftime("%Y-%m-%d")
    key = {"user": "requester", "group": "requester"}.get(by, by)
    sums = rollups.daily_sums(since, key, scope_of(me, mine=mine), endpoint)
    prices = _prices(me)
    groups: dict[str, list[str]] = {}
    if by == "group":
        directory = me.directory()
        for requester in {s.key for s in sums}:
            try:
                groups[requester] = sorted(directory.groups_of(requester)) or ["(no group)"]
            except Exception:  # a requester deleted since: its rows stay, under no group
                groups[requester] = ["(no group)"]
    found: dict[str, Totals] = defaultdict(Totals)
    for s in sums:
        if by == "group":
            keys = groups.get(s.key, ["(no group)"])
        elif by == "user":
            keys = [s.key or "(unknown)"]
        else:
            keys = [s.key]
        cost = _cost(prices, s.endpoint, s.rows, s.input_tokens, s.output_tokens)
        for k in keys:
            t = found[k]
            t.requests += s.requests
            t.errors += s.errors
            t.rows += s.rows
            t.input_tokens += s.input_tokens
            t.output_tokens += s.output_tokens
            t.latency_ms += s.latency_ms
            _add_cost(t, cost)
    if by == "day":
        return sorted(found.items())
    return sorted(found.items(), key=lambda kv: (-(kv[1].cost_usd or 0), -kv[1].requests, kv[0]))


def _entity_prices(me: Me) -> dict[tuple[str, str], SimpleNamespace]:
    return {
        (e.name, entity.name): SimpleNamespace(**entity.options)
        for e in me.catalog.list()
        for entity in e.served_entities()
    }


def entity_breakdown(
    me: Me, rollups: Rollups, days: int, *, mine: bool, endpoint: str | None = None
) -> list[tuple[tuple[str, str], Totals]]:
    """The last `days` (UTC, from the start of the first day) the principal may read, of `endpoint` (None:
    all), per (endpoint, served entity that answered); each priced at that entity's prices as they are now.
    Largest first."""
    since = (datetime.now(UTC) - timedelta(days=days - 1)).strftime("%Y-%m-%d")
    prices = _entity_prices(me)
    found: list[tuple[tuple[str, str], Totals]] = []
    for s in rollups.entity_sums(since, scope_of(me, mine=mine), endpoint):
        options = prices.get((s.endpoint, s.served_entity))
        t = Totals(
            requests=s.requests,
            errors=s.errors,
            rows=s.rows,
            input_tokens=s.input_tokens,
            output_tokens=s.output_tokens,
            latency_ms=s.latency_ms,
            fallbacks=s.fallbacks,
            cost_usd=None if options is None else price(options, s.rows, s.input_tokens, s.output_tokens),
        )
        found.append(((s.endpoint, s.served_entity), t))
    return sorted(found, key=lambda kv: (-kv[1].requests, kv[0]))


def entity_series(me: Me, rollups: Rollups, endpoint: str, hours: int) -> dict[str, Any]:
    """Per hour (UTC) of one endpoint the principal manages: requests per served entity, and those a fallback
    answered; columns for uPlot beside `series`' x."""
    made = None if me.principal.admin else me.catalog.managed().get(endpoint)
    since = hour_floor(hours - 1)
    start = datetime.strptime(since, "%Y-%m-%dT%H").replace(tzinfo=UTC)
    index = {(start + timedelta(hours=i)).strftime("%Y-%m-%dT%H"): i for i in range(hours)}
    by_entity: dict[str, list[int]] = {}
    fallbacks = [0] * hours
    for h in rollups.entity_hourly(since, endpoint, made):
        i = index.get(h.hour)
        if i is None:
            continue
        by_entity.setdefault(h.served_entity, [0] * hours)[i] += h.requests
        fallbacks[i] += h.fallbacks
    return {"entities": dict(sorted(by_entity.items())), "fallbacks": fallbacks}
