"""Every AI function the package ships is planned by a handler found by its kind (or, for table functions, by its name)."""

from __future__ import annotations

from aifuncs.functions import all_specs
from aifuncs.planner._kinds import call_handler, macro_handler, table_handlers


def test_every_function_has_a_handler() -> None:
    tables = dict(table_handlers())
    unplanned = [
        spec.name
        for spec in all_specs().values()
        if not (spec.name in tables if spec.kind == "table" else macro_handler(spec) or call_handler(spec))
    ]
    assert unplanned == []
    assert list(tables) == ["ai_forecast", "vector_search"]  # expanded in this order
