"""`aifuncs query` ends in bounded time when its logs are locked, and says so in its exit code and on stderr;
the rows it could not write are not lost: the next aifuncs process writes them."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from servers import FakeServer

import aifuncs
from aifuncs.cli import EXIT_UNACCOUNTED
from aifuncs.runtime import default_runtime

TESTS = Path(__file__).resolve().parents[1]


@pytest.fixture
def llm(home: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeServer]:
    monkeypatch.delenv("AIFUNCS_TOKEN", raising=False)
    with FakeServer() as server:
        aifuncs.endpoints.create("llm", kind="openai", model="m", base_url=server.url + "/v1")
        yield server


def query(sql: str) -> tuple[int, str, str, float]:
    began = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "aifuncs.cli", "query", sql, "--format", "csv"],
        capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(TESTS)},
    )  # fmt: skip
    return done.returncode, done.stdout, done.stderr, time.monotonic() - began


def test_a_locked_usage_log_makes_an_honest_and_bounded_exit(llm: FakeServer, home: Path) -> None:
    code, out, err, unlocked_s = query("SELECT ai_query('llm', 'first') AS r")  # makes usage.db
    assert code == 0 and "echo: first" in out, err
    holder = sqlite3.connect(home / "usage.db", isolation_level=None)
    try:
        holder.execute("BEGIN EXCLUSIVE")  # another process writing, or a stuck reader's lock
        code, out, err, locked_s = query("SELECT ai_query('llm', 'second') AS r")
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert "echo: second" in out  # the answer was given, and the rows' fate is told
    assert code == EXIT_UNACCOUNTED and "usage log" in err and "journal" in err, err
    # Bounded: the writer thread's wait (5 s), its own (2 s a log) and the exit's brief one: 13 s measured,
    # where it used to take a minute.
    assert locked_s - unlocked_s < 30, (locked_s, unlocked_s)
    rows = [r for r in default_runtime().usage.read() if r["endpoint"] == "llm"]  # this process replays it
    assert len(rows) == 2 and llm.stats.requests == 2  # each request paid once, each with its row
