"""The progress line: counts, rows left and ETA on the bulk path, silence off a terminal."""

from __future__ import annotations

import io

import duckdb
import pytest
from servers import FakeServer

import aifuncs
from aifuncs.runtime._progress import Progress


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture
def slow(con: duckdb.DuckDBPyConnection):  # type: ignore[no-untyped-def]
    con.execute("CREATE TABLE items AS SELECT range AS id FROM range(300)")
    with FakeServer(delay_s=0.05) as server:
        aifuncs.endpoints.create(
            "slow",
            kind="serving",
            url=server.url + "/invocations",
            returns="BIGINT",
            max_batch_rows=4,
            max_concurrency=2,
            usd_per_1k_rows=1.0,
        )
        yield con


def test_a_long_query_draws_its_progress_and_ends_the_line(slow: duckdb.DuckDBPyConnection) -> None:
    terminal = Terminal()
    line = Progress.for_terminal(stream=terminal)
    assert line is not None
    aifuncs.sql(slow, "CREATE TABLE scored AS SELECT id, ai_query('slow', id) AS y FROM items", progress=line)
    drawn = terminal.getvalue()
    assert drawn.endswith("\n") and "\r\x1b[2K" in drawn  # redrawn in place, ended once
    last = drawn.rstrip("\n").split("\r\x1b[2K")[-1]
    assert last.startswith("aifuncs: 300 of 300 rows · ")
    assert "75 requests" in last and "$0.3000" in last
    assert "ETA" in drawn  # shown while rows were left


def test_no_progress_off_a_terminal_or_when_asked(
    slow: duckdb.DuckDBPyConnection, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert Progress.for_terminal(stream=io.StringIO()) is None  # not a terminal
    assert Progress.for_terminal(False, stream=Terminal()) is None
    monkeypatch.setenv("AIFUNCS_PROGRESS", "off")
    assert Progress.for_terminal(True, stream=Terminal()) is None
    monkeypatch.delenv("AIFUNCS_PROGRESS")
    aifuncs.sql(slow, "SELECT ai_query('slow', id) FROM items").fetchall()  # stderr is not a terminal here
    assert capsys.readouterr().err == ""


def test_a_streamed_query_counts_its_rows_first_for_rows_left(slow: duckdb.DuckDBPyConnection) -> None:
    terminal = Terminal()
    line = Progress.for_terminal(stream=terminal)
    assert line is not None
    # A join is streamed through the UDF (not the bulk path): its rows are counted with plain SQL first.
    query = (
        "CREATE TABLE scored AS SELECT i.id, ai_query('slow', i.id) AS y"
        " FROM items i JOIN (SELECT 1 AS one) o ON true"
    )
    aifuncs.sql(slow, query, progress=line)
    assert line.total_rows == 300
    last = terminal.getvalue().rstrip("\n").split("\r\x1b[2K")[-1]
    assert last.startswith("aifuncs: 300 of 300 rows · ")
    line = Progress(None)
    line.expect(10)
    line.expect(None)  # a statement that cannot be counted: no total at all, rather than a wrong one
    line.expect(5)
    assert line.total_rows is None and line.snapshot()["eta_s"] is None
