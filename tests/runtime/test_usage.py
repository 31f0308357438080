"""The usage log: rows buffered, then written to SQLite; none lost when a write fails."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from forking import run_forking

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
    except sqlite3.OperationalError:
        return []  # a writer has made the file but not yet its table
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


def _wait_until(condition: object, timeout_s: float = 5.0) -> bool:
    import time

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return True
        time.sleep(0.01)
    return False


def test_timed_writes_run_off_the_recording_thread(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """record() runs on the event loop: a due write must not make the model calls in flight wait for SQLite."""
    import threading

    monkeypatch.setenv("AIFUNCS_HOME", str(tmp_path))
    monkeypatch.setattr(_usage, "_FLUSH_EVERY_S", 0.0)
    writers: list[str] = []
    connect = _usage._connect

    def watched(path: Path) -> sqlite3.Connection:
        writers.append(threading.current_thread().name)
        return connect(path)

    monkeypatch.setattr(_usage, "_connect", watched)
    log = UsageLog()
    log.record(_row(1))
    assert _wait_until(lambda: _stored(tmp_path / "usage.db") == [1])
    assert writers and threading.current_thread().name not in writers


def test_a_failed_timed_write_warns_and_keeps_its_rows(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("AIFUNCS_HOME", str(tmp_path))
    monkeypatch.setattr(_usage, "_FLUSH_EVERY_S", 0.0)
    connect = _usage._connect
    attempts: list[int] = []

    def broken(path: Path) -> sqlite3.Connection:
        attempts.append(1)
        raise sqlite3.OperationalError("database is locked")

    monkeypatch.setattr(_usage, "_connect", broken)
    log = UsageLog()
    with caplog.at_level("WARNING", logger="aifuncs"):
        log.record(_row(1))
        assert _wait_until(lambda: attempts and not log._flushing)
    assert "database is locked" in caplog.text
    monkeypatch.setattr(_usage, "_connect", connect)
    assert [r["rows"] for r in log.read()] == [1]


def test_a_forked_child_writes_its_own_rows_even_if_the_parent_was_writing(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """multiprocessing forks on Linux: a write under way in another thread (inside SQLite, whose mutexes a
    child would inherit locked) is waited for, and the parent's pending rows are the parent's to write."""
    monkeypatch.setenv("AIFUNCS_HOME", str(tmp_path))
    done = run_forking(
        """
        import time
        from aifuncs.runtime._usage import UsageLog, UsageRow, now

        def row(n):
            return UsageRow(now(), "ep", 1, "python", "ai_query", n, None, None, 1.0, "ok", 1, None)

        log = UsageLog()
        log.record(row(1))  # pending in the parent
        writer = held_in_a_thread(log._writing)  # the timed writer, under way at the fork
        started = time.monotonic()

        def child():
            log.record(row(2))
            log.flush()

        print("child exit", in_a_forked_child(child), "waited", time.monotonic() - started > 0.2)
        writer.join()
        print("rows", [r["rows"] for r in log.read()])
        """
    )
    assert done.returncode == 0, done.stderr
    # The fork waited for the write; the parent's row once, the child's once.
    assert done.stdout.split("\n")[:2] == ["child exit 0 waited True", "rows [1, 2]"]


def test_a_finished_query_writes_its_rows_without_waiting_for_a_read(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Another process (`aifuncs usage`, a dashboard) sees a query's rows soon after it ends, though this one
    records nothing more."""
    monkeypatch.setenv("AIFUNCS_HOME", str(tmp_path))
    monkeypatch.setattr(_usage, "_FLUSH_EVERY_S", 3600.0)  # no timed write: only the query's end writes
    log = UsageLog()
    log.record(_row(7))
    assert _stored(tmp_path / "usage.db") == []  # buffered: not due yet
    log.query_done()
    assert _wait_until(lambda: _stored(tmp_path / "usage.db") == [7])


FIRST_WRITE = """
import sys, time
from pathlib import Path
from aifuncs.runtime._usage import _connect
start = float(sys.argv[2])
while time.time() < start:
    pass
for n in range(20):  # a fresh file each round: every process finds its added columns missing at once
    _connect(Path(sys.argv[1]) / f"usage-{n}.db").close()
"""


def test_processes_opening_a_new_usage_log_at_once_all_succeed(tmp_path: Path) -> None:
    """Two Spark workers wrote their first usage rows at the same instant: both found the added columns
    missing, and the second ALTER TABLE failed with "duplicate column name"."""
    import subprocess
    import sys
    import time

    start = time.time() + 1.0
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", FIRST_WRITE, str(tmp_path), str(start)], stderr=subprocess.PIPE, text=True
        )
        for _ in range(4)
    ]
    failures = [w.communicate(timeout=120)[1] for w in workers if w.wait(timeout=120) != 0]
    assert failures == []
    db = sqlite3.connect(tmp_path / "usage-19.db")
    columns = {row[1] for row in db.execute("PRAGMA table_info(usage)")}
    db.close()
    assert set(UsageRow._fields) <= columns
