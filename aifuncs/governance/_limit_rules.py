"""The rules of rate limits, apart from where their buckets are kept: the AI gateway's `rate_limits` checked
(`parse_limits`), the buckets a principal's request must pass by Databricks' precedence (`applicable`), how
long limits make a query take (`pace`), and what a request reserves ahead (`reservable`)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from aifuncs.errors import ConfigError
from aifuncs.governance.principals import Principal, PrincipalStore

__all__ = ["Bucket", "Check", "RateLimit", "applicable", "pace", "parse_limits", "reservable"]

KEYS = ("endpoint", "user", "user_group", "service_principal")
_PRINCIPAL_KIND = {"user": "user", "user_group": "group", "service_principal": "service_principal"}
MAX_LIMITS = 20
MAX_GROUP_LIMITS = 5
_FIELDS = {"calls", "tokens", "key", "principal", "renewal_period", "burst"}


@dataclass(frozen=True)
class RateLimit:
    key: str = "endpoint"
    calls: int | None = None  # per minute
    tokens: int | None = None  # per minute
    principal: str | None = None  # the user, group or service principal a custom limit is for
    renewal_period: str = "minute"
    burst: int | None = None  # requests (or tokens) admitted at once; default one second's worth

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}


def parse_limits(entries: Any, principals: PrincipalStore | None = None) -> list[RateLimit]:
    """Rate limits from the AI gateway's `rate_limits` list, each checked; all are refused if one is wrong."""
    if not isinstance(entries, list):
        raise ConfigError(
            'rate_limits is a list, e.g. [{"calls": 100, "renewal_period": "minute", "key": "user"}].'
        )
    limits: list[RateLimit] = []
    for number, entry in enumerate(entries, start=1):
        where = f"rate limit {number}"
        if not isinstance(entry, dict):
            raise ConfigError(f"{where} is not an object: give calls or tokens, key and renewal_period.")
        unknown = sorted(set(entry) - _FIELDS)
        if unknown:
            raise ConfigError(f"{where} has unknown fields {unknown}; fields: {', '.join(sorted(_FIELDS))}.")
        calls, tokens, burst = entry.get("calls"), entry.get("tokens"), entry.get("burst")
        if calls is None and tokens is None:
            raise ConfigError(
                f"{where} sets neither calls nor tokens: give calls (per minute), tokens, or both."
            )
        for name, value in (("calls", calls), ("tokens", tokens), ("burst", burst)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value <= 0):
                raise ConfigError(f"{where}: {name} must be a positive whole number, not {value!r}.")
        period = entry.get("renewal_period", "minute")
        if period != "minute":
            raise ConfigError(f"{where}: renewal_period is 'minute' (the only one), not {period!r}.")
        key = entry.get("key", "endpoint")
        if key not in KEYS:
            raise ConfigError(f"{where}: key is one of {', '.join(KEYS)}, not {key!r}.")
        principal = entry.get("principal")
        if key == "endpoint" and principal is not None:
            raise ConfigError(f"{where}: an endpoint limit applies to everyone; drop principal.")
        if key == "user_group" and not principal:
            raise ConfigError(f"{where}: a user_group limit names its group: add principal.")
        if principal is not None:
            if not isinstance(principal, str) or not principal:
                raise ConfigError(f"{where}: principal is a name, not {principal!r}.")
            if principals is not None:
                found = principals.get(principal)  # UnknownPrincipal names it
                if found.kind != _PRINCIPAL_KIND[key]:
                    raise ConfigError(
                        f"{where}: {principal!r} is a {found.kind.replace('_', ' ')}; a {key} limit names a"
                        f" {_PRINCIPAL_KIND[key].replace('_', ' ')}."
                    )
        limits.append(RateLimit(key, calls, tokens, principal, period, burst))
    scopes = [(limit.key, limit.principal) for limit in limits]
    repeated = sorted({f"{k}{'=' + p if p else ''}" for k, p in scopes if scopes.count((k, p)) > 1})
    if repeated:
        raise ConfigError(
            f"Each scope takes one limit (set calls and tokens in it); repeated: {', '.join(repeated)}."
        )
    if len(limits) > MAX_LIMITS:
        raise ConfigError(f"An endpoint takes at most {MAX_LIMITS} rate limits; {len(limits)} were given.")
    groups = sum(1 for limit in limits if limit.key == "user_group")
    if groups > MAX_GROUP_LIMITS:
        raise ConfigError(f"An endpoint takes at most {MAX_GROUP_LIMITS} group limits; {groups} were given.")
    return limits


@dataclass(frozen=True)
class Bucket:
    """One GCRA bucket: its state key, units per minute, burst, and whether it counts calls or tokens."""

    key: str
    per_minute: int
    burst: int
    unit: str  # "calls" | "tokens"

    @property
    def interval_s(self) -> float:
        return 60.0 / self.per_minute


@dataclass(frozen=True)
class Check:
    """Buckets of which at least one must have room (several only for a principal's limited groups)."""

    any_of: tuple[Bucket, ...]
    label: str  # how a refusal names it: "the endpoint's 600 calls/min"


def _buckets(endpoint: str, limit: RateLimit, owner: str) -> list[tuple[Bucket, str]]:
    found = []
    for unit, per_minute in (("calls", limit.calls), ("tokens", limit.tokens)):
        if per_minute is None:
            continue
        burst = limit.burst or max(1, math.ceil(per_minute / 60))
        # the rate is part of the key: a changed limit starts from a full bucket, not the old one's debt
        key = f"{endpoint.lower()}|{unit}|{per_minute}/{burst}|{owner}"
        found.append((Bucket(key, per_minute, burst, unit), f"{per_minute:,} {unit}/min"))
    return found


def applicable(
    endpoint: str, limits: Sequence[RateLimit], principal: Principal, groups: Iterable[str]
) -> tuple[Check, ...]:
    """The checks a request by `principal` (in `groups`) must pass, by Databricks' precedence."""
    checks: list[Check] = []
    for limit in limits:
        if limit.key == "endpoint":
            checks += [Check((b,), f"the endpoint's {text}") for b, text in _buckets(endpoint, limit, "*")]
    own = next(
        (x for x in limits if x.key in ("user", "service_principal") and x.principal == principal.name), None
    )
    member_of = set(groups)
    group_limits = [x for x in limits if x.key == "user_group" and x.principal in member_of]
    default = next((x for x in limits if x.key == "user" and x.principal is None), None)
    if own is not None:
        checks += [
            Check((b,), f"{principal.name}'s {text}")
            for b, text in _buckets(endpoint, own, f"p:{principal.name}")
        ]
    elif group_limits:
        for unit in ("calls", "tokens"):
            pairs = [
                (b, f"{x.principal}'s {text}")
                for x in sorted(group_limits, key=lambda x: str(x.principal))
                for b, text in _buckets(endpoint, x, f"g:{x.principal}")
                if b.unit == unit
            ]
            if pairs:
                checks.append(Check(tuple(b for b, _ in pairs), " or ".join(t for _, t in pairs)))
    elif default is not None:
        checks += [
            Check((b,), f"the per-user {text}")
            for b, text in _buckets(endpoint, default, f"p:{principal.name}")
        ]
    return tuple(checks)


def pace(checks: Sequence[Check], requests: int | None, tokens: int | None) -> tuple[float, str] | None:
    """How long the limits make `requests` requests of `tokens` tokens in all take at the least, in minutes,
    and the limit that sets it; None when no limit paces them (or they cannot be counted)."""
    slowest: tuple[float, str] | None = None
    for check in checks:
        # a principal in several limited groups may use all of them: their rates add up
        by_unit: dict[str, int] = {}
        for bucket in check.any_of:
            by_unit[bucket.unit] = by_unit.get(bucket.unit, 0) + bucket.per_minute
        for unit, per_minute in by_unit.items():
            amount = requests if unit == "calls" else tokens
            if amount is None:
                continue
            burst = sum(b.burst for b in check.any_of if b.unit == unit)
            minutes = max(0, amount - burst) / per_minute
            if slowest is None or minutes > slowest[0]:
                slowest = (minutes, f"{per_minute:,} {unit}/min ({check.label})")
    return slowest


def reservable(checks: Sequence[Check], tokens: int) -> int:
    """The tokens a request reserves ahead: its estimate, never below 0 and never above one minute of the
    smallest token limit in `checks`. The estimate is the caller's to declare (`max_tokens`): reserving a
    huge one would push a shared bucket (the endpoint's) years ahead and refuse everyone, a negative one would
    make its settling debit the difference. What the model reports is settled exactly either way."""
    sizes = [b.per_minute for check in checks for b in check.any_of if b.unit == "tokens"]
    return min(max(int(tokens), 0), min(sizes)) if sizes else max(int(tokens), 0)
