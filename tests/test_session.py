"""Sessions: what one caller runs with stays its own, however many callers share the process.

Two scheduled jobs and a query run at once in three threads of one process, all sampling the same chat
endpoint (temperature 0.7: answers are kept in a job's checkpoint, never shared). Each job's checkpoint
holds its own answers and nothing else, each budget, progress count and usage label counts its own requests.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from pathlib import Path
from typing import Any

import pytest
from servers import FakeServer

import aifuncs
from aifuncs import jobs
from aifuncs.jobs import Exit
from aifuncs.runtime import default_runtime
from aifuncs.session import Session, open_session

ROWS = {"a": 24, "b": 16, "query": 20}

# The last statement fails on purpose: a failed job keeps its checkpoint, which the test then reads.
JOB = """
SELECT ai_query('chat', 'job {name} row ' || range, modelParameters => {{'temperature': 0.7}}) AS reply
FROM range({rows});
SELECT error('stop here, keeping the checkpoint')
"""


@pytest.fixture
def chat(home: Path):  # type: ignore[no-untyped-def]
    with FakeServer(delay_s=0.05) as server:
        aifuncs.endpoints.create(
            "chat", kind="openai", base_url=server.url + "/v1", model="m", max_concurrency=4
        )
        yield server


def _checkpoint_answers(home: Path, job: str) -> int:
    [db] = home.glob(f"jobs/{job}-*/checkpoint.db")
    with sqlite3.connect(db) as con:
        return int(con.execute("SELECT count(*) FROM answers").fetchone()[0])


def test_two_jobs_and_a_query_in_three_threads_keep_their_checkpoints_budgets_progress_and_labels(
    chat: FakeServer, home: Path, tmp_path: Path
) -> None:
    start = threading.Barrier(3, timeout=60)
    results: dict[str, Any] = {}
    failures: list[BaseException] = []

    def job(name: str) -> None:
        path = tmp_path / f"{name}.sql"
        path.write_text(JOB.format(name=name, rows=ROWS[name]))
        start.wait()
        results[name] = jobs.run(path, max_requests=ROWS[name])  # exactly its own requests fit

    def query() -> None:
        con = aifuncs.connect()
        start.wait()
        relation = aifuncs.sql(
            con,
            "SELECT ai_query('chat', 'query row ' || range, modelParameters => {'temperature': 0.7}) FROM range(20)",
            max_requests=ROWS["query"],
            usage_context={"who": "query"},
        )
        assert relation is not None
        results["query"] = relation.fetchall()
        con.close()

    def guarded(work: Any, *args: str) -> None:
        try:
            work(*args)
        except BaseException as error:  # raised again in the test's thread
            failures.append(error)

    threads = [
        threading.Thread(target=guarded, args=(job, "a")),
        threading.Thread(target=guarded, args=(job, "b")),
        threading.Thread(target=guarded, args=(query,)),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not failures, failures
    assert len(results["query"]) == ROWS["query"]

    for name in ("a", "b"):
        result = results[name]
        assert result.exit_code == Exit.ERROR and "stop here" in (result.error or "")
        # Its budget and progress counted its own requests and rows: nobody else's fit in max_requests.
        assert (result.requests, result.rows) == (ROWS[name], ROWS[name])
        # Its checkpoint holds its own answers: every row of its own, none of the other job's or the query's.
        assert _checkpoint_answers(home, name) == ROWS[name]

    # Usage rows carry the labels of the session that sent them.
    by_label: dict[str, int] = {}
    for row in default_runtime().usage.read():
        label = row["usage_context"] or ""
        by_label[label] = by_label.get(label, 0) + row["rows"]
    for name in ("a", "b"):
        labels = json.dumps({"job": name, "run_id": str(results[name].run_id)})
        assert by_label.pop(labels) == ROWS[name]
    assert by_label == {json.dumps({"who": "query"}): ROWS["query"]}


def test_a_session_derived_for_a_query_leaves_its_connection_session_as_it_was(home: Path) -> None:
    base = open_session()
    query = base.derive(wait_for_limits=False)
    assert isinstance(query, Session) and query.runtime is base.runtime and query.identity is base.identity
    assert base.wait_for_limits and not query.wait_for_limits
    assert base.checkpoint is None and base.meters == ()
    assert "token" not in repr(base).lower()
