from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parent


def run(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(TESTS)}
    return subprocess.run(
        [sys.executable, "-m", "aifuncs.cli", *args], capture_output=True, text=True, env=env, timeout=120
    )


def test_endpoint_lifecycle_from_the_shell() -> None:
    created = run(
        "endpoints",
        "create",
        "doubler",
        "--kind",
        "python",
        "-o",
        "function=sample_models:doubled",
        "-o",
        "returns=DOUBLE",
    )
    assert created.returncode == 0, created.stderr
    assert run("endpoints", "list").stdout.split()[:3] == ["doubler", "python", "v1"]
    assert run("endpoints", "update", "doubler", "--description", "x2").returncode == 0
    assert '"version": 2' in run("endpoints", "get", "doubler", "--json").stdout
    assert run("endpoints", "versions", "doubler").stdout.count("\n") == 2
    query = run(
        "query", "SELECT ai_query('doubler', i::DOUBLE) AS d FROM range(3) t(i) ORDER BY i", "--format", "csv"
    )
    assert query.returncode == 0, query.stderr
    assert query.stdout.split() == ["d", "0.0", "2.0", "4.0"]
    assert run("endpoints", "delete", "doubler").returncode == 0
    assert "No endpoints yet" in run("endpoints", "list").stdout


def test_errors_are_one_line_messages_without_tracebacks() -> None:
    for args, message in [
        (("endpoints", "get", "nope"), "error: Unknown endpoint 'nope'"),
        (("endpoints", "create", "x", "--kind", "python", "-o", "api_key=sk-1"), "environment variable"),
        (("endpoints", "create", "x", "--kind", "python", "-o", "oops"), "key=value"),
        (("query", "SELECT ai_query('nope', 1)"), "error: Unknown endpoint 'nope'"),
        (("query", "SELEC 1"), "error: Parser Error"),
    ]:
        result = run(*args)
        assert result.returncode == 1
        assert message in result.stderr and "Traceback" not in result.stderr


def test_query_reads_a_file_against_a_database(tmp_path: Path) -> None:
    script = tmp_path / "job.sql"
    script.write_text("CREATE TABLE t AS SELECT 21 AS v;\nSELECT v * 2 AS answer FROM t;")
    result = run("query", "--file", str(script), "--db", str(tmp_path / "w.duckdb"), "--format", "json")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == '[{"answer":42}]'


def test_cache_stats_clear_and_no_cache_from_the_shell() -> None:
    from servers import FakeServer

    with FakeServer() as server:
        url = f"url={server.url}/invocations"
        assert (
            run(
                "endpoints", "create", "double", "--kind", "serving", "-o", url, "-o", "returns=BIGINT"
            ).returncode
            == 0
        )
        query = "SELECT sum(ai_query('double', i % 10))::BIGINT AS s FROM range(100) t(i)"
        assert run("query", query, "--format", "csv", "--no-cache").stdout.split() == ["s", "900"]
        assert run("cache", "stats").stdout.startswith("0 answers")
        assert run("query", query, "--format", "csv").stdout.split() == ["s", "900"]
        assert run("query", query, "--format", "csv").stdout.split() == ["s", "900"]
        assert server.stats.rows == 20  # 10 distinct per run: --no-cache, then the first cached run only
        stats = run("cache", "stats")
        assert stats.stdout.startswith("10 answers") and "double" in stats.stdout
        assert run("cache", "clear", "--endpoint", "double").stdout.startswith("Forgot 10 answers")
        assert '"answers": 0' in run("cache", "stats", "--json").stdout


def test_a_database_another_process_holds_is_one_clear_line(tmp_path: Path) -> None:
    import json

    import duckdb

    database = tmp_path / "warehouse.duckdb"
    (tmp_path / "job.sql").write_text("SELECT 1")
    notebook = duckdb.connect(str(database))  # this process holds the file, as a notebook would
    try:
        messages = []
        for args in (("query", "SELECT 1"), ("explain", "SELECT 1")):
            result = run(*args, "--db", str(database))
            assert result.returncode != 0 and "Traceback" not in result.stderr
            assert len(result.stderr.strip().splitlines()) == 1, result.stderr
            messages.append(result.stderr.strip())
        job = run("run", str(tmp_path / "job.sql"), "--db", str(database))  # JSON events off a terminal
        assert job.returncode == 1
        messages.append("error: " + json.loads(job.stdout.splitlines()[-1])["error"])
    finally:
        notebook.close()
    for message in messages:
        assert f", PID {os.getpid()})" in message  # the program and process that hold it
        assert "is open in another process" in message and "Close it there" in message
        assert "IO Error" not in message
    assert run("query", "SELECT 1", "--db", str(database)).returncode == 0
