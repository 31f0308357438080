"""The usage log: rows buffered, then written to SQLite; none lost when a write fails."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from aifuncs.runtime import _usage
from aifuncs.runtime._usage import UsageLog, UsageRow


def _row(rows: int) -> UsageRow:
    return UsageRow(_usage.now(), "ep", 1, "python", "ai_query", rows, None, None, 1.0, "ok", 1, None)


def _stored(path: Path) -> list[int]:
    if not path.exists():
        return []
    db = sqlite3.connect(path)
    try:
        return [r[0] for r in db.execute("SELECT rows FROM usage ORDER BY rows")]
    finally:
        db.close()


def test_rows_that_failed_to_write_go_with_the_next_flush(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("AIFUNCS_HOME", str(tmp_path))
    log = UsageLog()
    log.record(_row(1))
    connect = _usage._connect

    def broken(path: Path) -> sqlite3.Connection:
        raise sqlite3.OperationalError("database is locked")

    monkeypatch.setattr(_usage, "_connect", broken)
    with pytest.raises(sqlite3.OperationalError):
        log.flush()
    monkeypatch.setattr(_usage, "_connect", connect)
    log.record(_row(2))
    assert [r["rows"] for r in log.read()] == [1, 2]  # kept, written once
