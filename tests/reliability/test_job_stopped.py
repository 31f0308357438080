"""`aifuncs run` stopped by SIGTERM mid-job: it ends as a failure would, and its ledger row counts every request
the upstream received (failed and retried ones too), read back from the usage log."""

from __future__ import annotations

import json
from pathlib import Path

from servers import FakeServer

import aifuncs
from aifuncs import _runs
from aifuncs.runtime._usage import UsageLog
from reliability.harness import stop_running_job


def test_a_job_stopped_by_sigterm_records_what_it_spent(home: Path, tmp_path: Path) -> None:
    with FakeServer(delay_s=0.2) as upstream:  # slow enough that no loaded machine drains the batch first
        aifuncs.endpoints.create("slow", kind="openai", model="m", base_url=upstream.url + "/v1")
        job = tmp_path / "nightly.sql"
        job.write_text("SELECT ai_query('slow', 'q ' || i::VARCHAR) AS a FROM range(3000) t(i)")
        stop_running_job(upstream, job, timeout_s=30)
        sent = upstream.settled().requests
        assert 30 <= sent < 3000
        (row,) = _runs.runs("nightly")
        assert row["status"] == "interrupted", row
        assert row["requests"] >= 30, row  # what it had spent when told to stop, failed requests too
        # the usage log is exact: every request the upstream received, once, in the run's rows (requests still
        # in flight as the process ended are replayed from its journal)
        labels = json.dumps({"job": "nightly", "run_id": str(row["id"])})
        rows = [r for r in UsageLog().read() if r["usage_context"] == labels]
        settled = sum(r["attempts"] for r in rows if r["status"] != "interrupted")
        journaled = sum(r["attempts"] for r in rows)
        # requests journaled as they left but cut off by the exit count as paid (`interrupted`): at most
        # the endpoint's requests in flight
        assert settled <= sent <= journaled <= sent + 32, (settled, sent, journaled)
        assert len({r["request_id"] for r in rows}) == len(rows)
