"""What watches a query's model requests as they go: budgets (which may refuse one) and progress."""

from __future__ import annotations

from typing import Any, Protocol

from aifuncs.errors import BudgetExceeded
from aifuncs.providers.base import Prediction, Provider
from aifuncs.runtime._budget import price


class Meter(Protocol):
    def begin_request(self) -> None:
        """Before a request is sent; may raise `BudgetExceeded` to refuse it."""

    def end_request(self, rows: int, tokens: int, cost_usd: float | None) -> None:
        """A request came back with answers for `rows` rows."""

    def cancel_request(self) -> None:
        """A begun request failed or was cancelled."""

    def answered(self, rows: int, failed: int = 0) -> None:
        """Rows of a batch got their answers (sent, reused or NULL); `failed` of them carry an error instead."""

    def paced(self, limit: str) -> None:
        """A request waits for its turn under a rate limit (named as `limit`, e.g. "600 calls/min")."""


def begin_request(meters: tuple[Meter, ...]) -> None:
    """Tell every meter a request is about to go; if one refuses, the others forget it."""
    begun: list[Meter] = []
    try:
        for meter in meters:
            meter.begin_request()
            begun.append(meter)
    except BudgetExceeded:
        cancel_request(tuple(begun))
        raise


def cancel_request(meters: tuple[Meter, ...]) -> None:
    """Tell every meter a begun request failed or was cancelled."""
    for meter in meters:
        meter.cancel_request()


def end_request(meters: tuple[Meter, ...], provider: Provider, rows: int, output: Any) -> None:
    """Tell every meter what a request used: rows, the tokens its provider reported, their cost."""
    if not meters:
        return
    used = output if isinstance(output, Prediction) else Prediction(None)
    tokens = (used.input_tokens or 0) + (used.output_tokens or 0)
    for meter in meters:
        if isinstance(meter, TokenTally):
            meter.add(used)
    cost = price(provider.options, rows, used.input_tokens, used.output_tokens)
    for meter in meters:
        meter.end_request(rows, tokens, cost)


class TokenTally:
    """A meter that only counts the tokens its requests used, split as the model reported them (a REST
    answer's `usage`)."""

    def __init__(self) -> None:
        self.input_tokens = 0
        self.output_tokens = 0

    def begin_request(self) -> None:
        pass

    def end_request(self, rows: int, tokens: int, cost_usd: float | None) -> None:
        pass

    def cancel_request(self) -> None:
        pass

    def answered(self, rows: int, failed: int = 0) -> None:
        pass

    def paced(self, limit: str) -> None:
        pass

    def add(self, used: Prediction) -> None:
        self.input_tokens += used.input_tokens or 0
        self.output_tokens += used.output_tokens or 0
