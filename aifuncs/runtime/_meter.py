"""What watches a query's model requests as they go: budgets (which may refuse one) and progress."""

from __future__ import annotations

from typing import Protocol


class Meter(Protocol):
    def begin_request(self) -> None:
        """Before a request is sent; may raise `BudgetExceeded` to refuse it."""

    def end_request(self, rows: int, tokens: int, cost_usd: float | None) -> None:
        """A request came back with answers for `rows` rows."""

    def cancel_request(self) -> None:
        """A begun request failed or was cancelled."""

    def answered(self, rows: int) -> None:
        """Rows of a batch got their answers (sent, reused or NULL)."""
