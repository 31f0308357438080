"""The answer cache under AIFUNCS_HOME: what it holds, and forgetting it (`aifuncs cache stats|clear`)."""

from __future__ import annotations

from aifuncs._home import home
from aifuncs.runtime._store import AnswerStore, StoreStats

__all__ = ["StoreStats", "clear", "stats"]


def stats() -> StoreStats:
    """How many answers are kept, per endpoint, and the size of the store on disk."""
    return AnswerStore(home() / "answers.db").stats()


def clear(endpoint: str | None = None) -> int:
    """Forget the kept answers of one endpoint, or of all; returns how many were forgotten."""
    path = home() / "answers.db"
    return AnswerStore(path).clear(endpoint) if path.exists() else 0
