"""Scheduled jobs: `aifuncs run` end to end, as a scheduler runs it (a child process, no terminal)."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import duckdb
import pytest
from servers import FakeServer, free_port

import aifuncs
from aifuncs import jobs
from aifuncs.cli import main
from aifuncs.errors import SqlError
from aifuncs.jobs import Exit
from aifuncs.jobs._params import markers, substitute

TESTS = Path(__file__).resolve().parent

# 60 tickets, 30 distinct texts: classified at temperature 0 (shared cache) and answered by sampling
# (temperature 0.7: every row its own answer, equal texts included, kept in the job's checkpoint).
JOB = """
CREATE OR REPLACE TABLE tickets AS
    SELECT range AS id, 'ticket ' || (range % 30) || ' about my bill' AS body,
           DATE '2026-11-23' + CAST(range % 2 AS INTEGER) AS day
    FROM range(120);
SELECT id, ai_classify(body, ['bug', 'billing'], endpoint => 'chat') AS topic,
       ai_query('chat', body, modelParameters => {'temperature': 0.7}) AS reply
FROM tickets WHERE day = CAST(:day AS DATE)
"""
ROWS = 60
# Requests the job needs: the day's 15 distinct texts classified once each, and all 60 rows sampled.
NEEDED = 15 + ROWS


def start_job(*args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(TESTS)}
    return subprocess.Popen(
        [sys.executable, "-m", "aifuncs.cli", "run", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        env=env,
    )


def finish(process: subprocess.Popen[str]) -> tuple[int, list[dict[str, Any]], str]:
    out, err = process.communicate(timeout=120)
    return process.returncode, [json.loads(line) for line in out.splitlines() if line.strip()], err


def events_until(process: subprocess.Popen[str], done: Any, timeout_s: float = 60) -> list[dict[str, Any]]:
    """JSON events of a running job, read until `done(event)` holds."""
    assert process.stdout is not None
    seen, deadline = [], time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        seen.append(json.loads(line))
        if done(seen[-1]):
            return seen
    raise AssertionError(f"the job never got there; events: {seen}")


def stored_answers(home: Path) -> int:
    """Answers kept on disk: the shared cache plus every job checkpoint."""
    total = 0
    for db in [home / "answers.db", *home.glob("jobs/*/checkpoint.db")]:
        if db.exists():
            with sqlite3.connect(db) as con:
                total += con.execute("SELECT count(*) FROM answers").fetchone()[0]
    return total


@pytest.fixture
def chat(home: Path):  # type: ignore[no-untyped-def]
    with FakeServer(delay_s=0.05) as server:
        aifuncs.endpoints.create(
            "chat", kind="openai", base_url=server.url + "/v1", model="m", max_concurrency=2,
            usd_per_1m_input_tokens=1.0,
        )  # fmt: skip
        yield server


def test_a_killed_job_resumes_without_paying_twice_and_the_ledger_shows_both_runs(
    chat: FakeServer, tmp_path: Path, home: Path
) -> None:
    job = tmp_path / "nightly.sql"
    job.write_text(JOB)
    args = (str(job), "--db", str(tmp_path / "w.duckdb"), "--param", "day=2026-11-24", "--output",
            "table:replies", "--progress-interval", "0.1")  # fmt: skip
    first = start_job(*args)
    events_until(first, lambda e: e["event"] == "progress" and e["requests"] >= 30)
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=30)
    paid_before = chat.settled().rows  # requests in flight at the kill belong to the first run
    kept = stored_answers(home)
    assert 0 < kept < NEEDED  # killed half-way, with answers kept

    code, events, err = finish(start_job(*args))
    assert code == 0, err
    summary = events[-1]
    assert summary["event"] == "summary" and summary["status"] == "succeeded"
    assert summary["resumed_from"] == events[0]["run_id"] - 1 and summary["checkpoint_answers"] > 0
    # The rerun asked exactly what had no answer kept: rows answered before the kill were not paid again.
    assert chat.stats.rows - paid_before == NEEDED - kept
    assert summary["requests"] == NEEDED - kept
    # Paid at most once per row, but for what was sent and not yet kept when the process died: both call
    # sites share the endpoint's gate of 2 x max_concurrency = 4 places, so this bound holds by construction.
    assert chat.stats.rows <= NEEDED + 4

    with duckdb.connect(str(tmp_path / "w.duckdb")) as con:
        rows = con.execute(
            "SELECT count(*), count(topic), count(reply), count(DISTINCT id) FROM replies"
        ).fetchall()
    assert rows == [(ROWS, ROWS, ROWS, ROWS)] and summary["output_rows"] == ROWS
    assert not list(home.glob("jobs/*/checkpoint.db"))  # a finished job leaves no checkpoint

    runs = jobs.list_runs("nightly")
    assert [r["status"] for r in runs] == ["succeeded", "interrupted"]
    assert runs[0]["params"] == {"day": "2026-11-24"} and runs[0]["output"] == "table:replies"
    assert runs[0]["requests"] == summary["requests"] and runs[0]["cost_usd"] > 0
    con = aifuncs.connect()
    assert con.sql("SELECT status, resumed_from FROM aifuncs_runs ORDER BY id").fetchall() == [
        ("interrupted", None),
        ("succeeded", runs[1]["id"]),
    ]
    con.close()


def test_a_second_run_of_a_running_job_does_nothing(chat: FakeServer, tmp_path: Path) -> None:
    job = tmp_path / "nightly.sql"
    job.write_text(JOB)
    args = (str(job), "--param", "day=2026-11-24", "--progress-interval", "0.1")
    first = start_job(*args)
    try:
        events_until(first, lambda e: e["event"] == "progress")
        code, events, err = finish(start_job(*args))
        assert code == Exit.LOCKED and "already running" in err and events == []
        other_day = finish(start_job(str(job), "--param", "day=2026-11-23"))  # another job: not locked
        assert other_day[0] == 0, other_day[2]
    finally:
        first.kill()
        first.wait()


def run_job(tmp_path: Path, sql: str, *args: str) -> int:
    job = tmp_path / "job.sql"
    job.write_text(sql)
    return main(["run", str(job), "--json", *args])


def test_exit_codes_a_scheduler_can_act_on(
    chat: FakeServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ok = "SELECT ai_query('chat', 'hello ' || range) AS r FROM range(4)"
    assert run_job(tmp_path, ok) == Exit.OK
    assert run_job(tmp_path, "SELEC 1") == Exit.BAD_SQL
    assert run_job(tmp_path, "SELECT ai_query('chta', 'x')") == Exit.BAD_SQL  # unknown endpoint
    assert run_job(tmp_path, "SELECT ai_classify('x', 'not a list', endpoint => 'chat')") == Exit.BAD_SQL
    assert run_job(tmp_path, "SELECT * FROM no_such_table") == Exit.BAD_SQL
    assert run_job(tmp_path, "SELECT :day") == Exit.BAD_SQL  # a parameter with no value
    assert run_job(tmp_path, ok, "--max-requests", "2") == Exit.BUDGET
    assert run_job(tmp_path, "SELECT 1/0 AS x, error('boom')") == Exit.ERROR

    aifuncs.endpoints.create("flaky", kind="python", function="sample_models:fails_on_13", returns="DOUBLE")
    failing = "SELECT ai_query('flaky', range::DOUBLE, failOnError => false) AS r FROM range(20)"
    assert run_job(tmp_path, failing) == Exit.OK  # per-row failures are the job's business...
    assert run_job(tmp_path, failing, "--max-failed-rows", "1") == Exit.OK
    assert run_job(tmp_path, failing, "--max-failed-rows", "0") == Exit.FAILED_ROWS  # ...past a threshold
    raising = "SELECT ai_query('flaky', range::DOUBLE) AS r FROM range(20)"
    assert run_job(tmp_path, raising) == Exit.ERROR  # failOnError: the model's error fails the job

    aifuncs.endpoints.create(
        "gone", kind="openai", base_url=f"http://127.0.0.1:{free_port()}/v1", model="m", max_retries=1,
        retry_base_s=0.01,
    )  # fmt: skip
    assert run_job(tmp_path, "SELECT ai_query('gone', 'hello') AS r") == Exit.UNREACHABLE
    summaries = [json.loads(line) for line in capsys.readouterr().out.splitlines() if '"summary"' in line]
    assert summaries[-1]["error"].startswith("Endpoint 'gone'") and summaries[-1]["status"] == "failed"
    assert [r["exit_code"] for r in jobs.list_runs("job")][::-1] == [
        0, 6, 6, 6, 6, 6, 3, 1, 0, 0, 4, 1, 5
    ]  # fmt: skip


def test_outputs_and_parameters(chat: FakeServer, tmp_path: Path) -> None:
    sql = "SELECT range AS id, ai_query('chat', $word || range) AS r FROM range(${n})"
    for output in ("out.parquet", "out.csv"):
        target = tmp_path / output
        assert run_job(tmp_path, sql, "-p", "word=hi ", "-p", "n=5", "-o", str(target)) == 0
        rows = duckdb.sql(f"SELECT id, r FROM '{target}' ORDER BY id").fetchall()
        assert rows[0] == (0, "echo: hi 0") and len(rows) == 5
    assert run_job(tmp_path, sql, "-p", "word=x", "-p", "n=2", "-p", "extra=1") == Exit.BAD_SQL
    databricks = "SELECT ai_query('chat', :word, returnType => 'STRING') AS r"
    target = tmp_path / "databricks.parquet"
    assert run_job(tmp_path, databricks, "--dialect", "databricks", "-p", "word=hey", "-o", str(target)) == 0
    assert duckdb.sql(f"SELECT r FROM '{target}'").fetchall() == [("echo: hey",)]
    with pytest.raises(SystemExit) as usage:
        main(["run"])
    assert usage.value.code == Exit.USAGE
    assert (
        main(["run", str(tmp_path / "job.sql"), "-p", "word=x", "-p", "n=1", "-o", "out.txt"]) == Exit.USAGE
    )
    assert main(["run", str(tmp_path / "job.sql"), "-p", "word"]) == Exit.USAGE


def test_parameter_markers_are_found_by_the_tokenizer() -> None:
    sql = "SELECT $a, :b, x::INT, ':c $d', j:path, l[1:n], {'k':v}, CAST(:e AS DATE) -- :f\nFROM t WHERE y = ${g}"
    assert [name for _, _, name in markers(sql, "duckdb")] == ["a", "b", "e", "g"]
    filled = substitute(sql, "duckdb", {"a": "it's", "b": "2", "e": "2026-11-24", "g": "-1.5"})
    assert filled.startswith(
        "SELECT 'it''s', 2, x::INT, ':c $d', j:path, l[1:n], {'k':v}, CAST('2026-11-24' AS DATE)"
    )
    assert filled.endswith("WHERE y = -1.5")
    with pytest.raises(SqlError, match="--param b=VALUE"):
        substitute("SELECT :b", "duckdb", {})


def test_runs_from_the_shell(chat: FakeServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_job(tmp_path, "SELECT ai_query('chat', 'hi') AS r") == 0
    capsys.readouterr()
    assert main(["runs", "list"]) == 0
    listed = capsys.readouterr().out
    assert "run 1 · job · succeeded · 1 rows" in listed
    assert main(["runs", "show", "1", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["status"] == "succeeded" and shown["requests"] == 1 and shown["exit_code"] == 0
    assert main(["runs", "show", "99"]) == 1


def test_the_nightly_example_job_on_the_offline_models(tmp_path: Path) -> None:
    """examples/nightly_tickets.sql as cron would run it, on a warehouse built by its companion job."""
    examples, warehouse = TESTS.parent / "examples", str(tmp_path / "warehouse.duckdb")
    built = finish(start_job(str(examples / "tickets_warehouse.sql"), "--db", warehouse, "-p",
                             f"csv={TESTS / 'data' / 'support_messages.csv'}", "-p", "day=2026-11-24"))  # fmt: skip
    assert built[0] == 0, built[2]
    nightly = (str(examples / "nightly_tickets.sql"), "--db", warehouse, "-p", "day=2026-11-24", "-o",
               str(tmp_path / "topics.csv"), "--max-failed-rows", "0")  # fmt: skip
    for _ in range(2):  # a rerun of the day replaces its rows
        code, events, err = finish(start_job(*nightly))
        assert code == 0, err
    with duckdb.connect(warehouse) as con:
        (day_tickets,) = con.execute(
            "SELECT count(*) FROM tickets WHERE created_at::DATE = '2026-11-24'"
        ).fetchone() or (0,)
        insights = con.execute("SELECT topic, sentiment, summary FROM ticket_insights").fetchall()
    assert day_tickets > 0 and len(insights) == day_tickets
    assert {t for t, _, _ in insights} <= {"billing", "shipping", "product", "account", "other"}
    assert all(summary for _, _, summary in insights)
    report = duckdb.sql(f"SELECT sum(tickets) FROM '{tmp_path / 'topics.csv'}'").fetchall()
    assert report == [(day_tickets,)] and events[-1]["output_rows"] > 0
    assert [r["status"] for r in jobs.list_runs("nightly_tickets")] == ["succeeded", "succeeded"]


def test_the_python_api_returns_how_the_run_ended(chat: FakeServer, tmp_path: Path) -> None:
    job = tmp_path / "report.sql"
    job.write_text("SELECT range AS id, ai_query('chat', 'hi ' || range) AS r FROM range(3)")
    shown: list[Any] = []
    result = jobs.run(job, on_result=shown.append)
    assert result.status == "succeeded" and result.exit_code == 0 and result.output_rows == 3
    assert shown[0].column("r").to_pylist() == ["echo: hi 0", "echo: hi 1", "echo: hi 2"]
    assert chat.stats.rows == 3  # shown and counted from one execution
    job.write_text("SELECT ai_query('chat', 'x', returnType => 'NOT A TYPE')")
    failed = jobs.run(job)  # what happens inside the job is the result's business, not an exception
    assert failed.exit_code == Exit.BAD_SQL and failed.status == "failed" and failed.error


def test_a_job_checks_its_arguments_before_it_pays(chat: FakeServer, tmp_path: Path) -> None:
    sql = "SELECT range AS id, ai_query('chat', 'hi ' || range) AS r FROM range(5)"
    job = tmp_path / "job.sql"
    job.write_text(sql)
    (tmp_path / "a-file").write_text("")
    (tmp_path / "a-folder.parquet").mkdir()
    for output, says in [
        (tmp_path / "no" / "such" / "folder" / "out.parquet", "does not exist (create it: mkdir -p"),
        (tmp_path / "a-file" / "out.csv", "is not a folder"),
        (tmp_path / "a-folder.parquet", "is a folder; name a file in it"),
        ("table:a.b.c.d", "is not a table name"),  # DuckDB names have three parts at most
        ("table:topics(x)", "is not a table name"),
    ]:  # usage errors (exit 2), as a scheduler reads them: nothing was run, nothing recorded
        code, events, err = finish(start_job(str(job), "--output", str(output)))
        assert code == Exit.USAGE and says in err and events == [], (code, err)
    with pytest.raises(aifuncs.errors.AifuncsError, match="does not exist"):  # the Python API as well
        jobs.run(job, output=str(tmp_path / "missing" / "out.csv"))
    # A later statement that cannot run stops the job before the first one pays.
    for later, code in [
        ("SELECT ai_query('chta', 'x')", Exit.BAD_SQL),  # an unknown endpoint
        ("SELEC 1", Exit.BAD_SQL),  # a statement that does not parse
        ("SELECT ai_query('chat', 'x', returnType => 'STRUCT<a INT')", Exit.BAD_SQL),  # a type that does not
        ("SELECT ai_classify('x', ['a', 'b'], endpont => 'chat')", Exit.BAD_SQL),  # a misspelt argument
    ]:
        assert run_job(tmp_path, f"CREATE TABLE paid AS {sql};\n{later}") == code
    assert chat.stats.requests == 0


def test_a_rerun_with_a_corrected_output_reuses_what_was_paid(chat: FakeServer, tmp_path: Path) -> None:
    job = tmp_path / "nightly.sql"
    job.write_text(JOB)
    args = (str(job), "--param", "day=2026-11-24")
    code, events, err = finish(
        start_job(*args, "--output", str(tmp_path / "a.parquet"), "--max-requests", "30")
    )
    assert code == Exit.BUDGET, err
    paid = chat.settled().rows
    assert 0 < paid < NEEDED
    code, events, err = finish(start_job(*args, "--output", str(tmp_path / "b.parquet")))  # another output
    assert code == 0, err
    assert events[-1]["resumed_from"] is not None and events[-1]["checkpoint_answers"] > 0
    assert chat.stats.rows == NEEDED  # every row paid once over both runs, none twice
    assert duckdb.sql(f"SELECT count(*) FROM '{tmp_path / 'b.parquet'}'").fetchall() == [(ROWS,)]
