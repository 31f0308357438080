"""Budgets: limits on model requests, tokens and cost, for one query or for the whole process.

The planner checks a query's estimate against its budgets before it starts (`check_estimate`); the
runtime then counts what each request really used, and refuses to send a request once a limit is
reached. Requests already in flight finish, and their answers are kept.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

from aifuncs.errors import BudgetExceeded


def price(
    options: Any, rows: int | None, input_tokens: int | None, output_tokens: int | None
) -> float | None:
    """The cost in USD of sending `rows` with these token counts, from the endpoint's prices; None unpriced."""
    prices = (
        (getattr(options, "usd_per_1k_rows", None), rows, 1e3),
        (getattr(options, "usd_per_1m_input_tokens", None), input_tokens, 1e6),
        (getattr(options, "usd_per_1m_output_tokens", None), output_tokens, 1e6),
    )
    priced = [(p, amount, per) for p, amount, per in prices if p is not None]
    if not priced or rows is None:
        return None
    return sum(p * (amount or 0) / per for p, amount, per in priced)


@dataclass(eq=False)
class Budget:
    """Limits (None: no limit) and what has been spent against them so far."""

    max_requests: int | None = None
    max_tokens: int | None = None
    max_cost_usd: float | None = None
    name: str = "query"
    requests: int = 0
    tokens: int = 0
    cost_usd: float = 0.0
    _in_flight: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def limited(self) -> bool:
        return any(v is not None for v in (self.max_requests, self.max_tokens, self.max_cost_usd))

    def check_estimate(self, requests: int | None, tokens: int | None, cost_usd: float | None) -> None:
        """Refuse, before it starts, a query whose estimate exceeds what is left of the budget."""
        for what, estimate, spent, limit in self._lines(requests, tokens, cost_usd):
            if limit is not None and estimate is not None and spent + estimate > limit:
                raise BudgetExceeded(
                    f"The {self.name} budget allows {_fmt(what, limit)}; this query is estimated at"
                    f" {_fmt(what, estimate)}"
                    + (f" on top of {_fmt(what, spent)} spent" if spent else "")
                    + ". Nothing was sent. Raise the limit, or narrow the query (see aifuncs explain)."
                )

    def begin_request(self) -> None:
        """Called before each model request; refuses it once a limit is reached."""
        with self._lock:
            for what, _, spent, limit in self._lines(None, None, None):
                if limit is None:
                    continue
                used = spent + (self._in_flight if what == "requests" else 0)
                if used >= limit:
                    raise BudgetExceeded(
                        f"The {self.name} budget of {_fmt(what, limit)} is used up ({_fmt(what, spent)} spent);"
                        " the query stopped. Answers already received are kept: rerun with a larger budget"
                        " to finish it."
                    )
            self._in_flight += 1

    def paced(self, limit: str) -> None:
        pass  # waiting costs nothing

    def answered(self, rows: int, failed: int = 0) -> None:
        pass

    def end_request(self, rows: int, tokens: int, cost_usd: float | None) -> None:
        with self._lock:
            self._in_flight -= 1
            self.requests += 1
            self.tokens += tokens
            self.cost_usd += cost_usd or 0.0

    def cancel_request(self) -> None:
        with self._lock:
            self._in_flight -= 1

    def _lines(
        self, requests: int | None, tokens: int | None, cost: float | None
    ) -> list[tuple[str, Any, Any, Any]]:
        return [
            ("requests", requests, self.requests, self.max_requests),
            ("tokens", tokens, self.tokens, self.max_tokens),
            ("cost", cost, self.cost_usd, self.max_cost_usd),
        ]


def _fmt(what: str, amount: float) -> str:
    return f"${amount:,.4f}" if what == "cost" else f"{amount:,} {what}"


_session: Budget | None = None


def set_session_budget(
    max_requests: int | None = None, max_tokens: int | None = None, max_cost_usd: float | None = None
) -> Budget | None:
    """Limit every query of this process together (None everywhere: remove the limit). Returns it."""
    global _session
    limits = (max_requests, max_tokens, max_cost_usd)
    _session = None if all(v is None for v in limits) else Budget(*limits, name="session")
    return _session


def session_budget() -> Budget | None:
    return _session
