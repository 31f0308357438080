"""`aifuncs run` stopped by SIGTERM: its ledger counts every request the upstream received, those its engine
had handed over and that were still to go when it was told to stop too (they are cancelled before counting)."""

from __future__ import annotations

from pathlib import Path

from servers import FakeServer

import aifuncs
from aifuncs import _runs
from reliability.harness import stop_running_job


def test_the_ledger_of_a_stopped_run_counts_what_the_upstream_received(home: Path, tmp_path: Path) -> None:
    # 0.2 s an answer: the 2,000 requests take 25 s or more at 16 in flight, so the stop comes well before the
    # batch could drain even on a machine whose cores are busy (at 0.05 s a loaded run sent them all first)
    with FakeServer(delay_s=0.2) as upstream:
        aifuncs.endpoints.create("slow", kind="openai", model="m", base_url=upstream.url + "/v1")
        job = tmp_path / "nightly.sql"  # one DuckDB vector of 2,048 rows: all handed over at once
        job.write_text("SELECT ai_query('slow', 'q ' || i::VARCHAR) AS a FROM range(2000) t(i)")
        stop_running_job(upstream, job, timeout_s=60)
        received = upstream.settled().requests
        (row,) = _runs.runs("nightly")
    assert row["status"] == "interrupted", row
    assert 30 <= received < 2000  # stopped: the rest of the batch was never sent
    # Each request the upstream received is in the ledger; a request cancelled between its journal entry
    # and its first byte counts as sent without arriving: at most the endpoint's 16 in flight.
    assert received <= row["requests"] <= received + 16, (row["requests"], received)
