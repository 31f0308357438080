"""One handler per kind of AI function, each in a module of its own, found by name through `_registry`.

Importing a handler's module registers it; table functions are expanded in the order imported here."""

from __future__ import annotations

from aifuncs.planner._kinds import (  # noqa: F401  (registered on import)
    _document,
    _embed,
    _forecast,
    _http,
    _query,
    _similarity,
    _task,
    _vector_search,
)
from aifuncs.planner._kinds._registry import (
    Call,
    Rewritten,
    call_handler,
    macro_handler,
    table_handlers,
)

__all__ = ["Call", "Rewritten", "call_handler", "macro_handler", "table_handlers"]
