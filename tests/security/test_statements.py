"""SQL over HTTP has bounds a token holder cannot push past: memory, time, threads, temp files, its own
functions. Each test runs a real `aifuncs serve` process."""

from __future__ import annotations

import glob
import os
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from .conftest import Secured, Serve

STATEMENTS = "/api/2.0/sql/statements"
FOREVER = "SELECT count(*) FROM range(1000000000000)"  # hours of work for DuckDB


def _post(url: str, token: str, body: dict[str, Any], timeout: float = 90) -> httpx.Response:
    return httpx.post(
        url + STATEMENTS, json=body, headers={"Authorization": f"Bearer {token}"}, timeout=timeout
    )


def _get(url: str, token: str, path: str) -> httpx.Response:
    return httpx.get(url + path, headers={"Authorization": f"Bearer {token}"}, timeout=60)


def _until(condition: Callable[[], Any], seconds: float = 60, what: str = "the condition") -> Any:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        found = condition()
        if found:
            return found
        time.sleep(0.1)
    raise AssertionError(f"{what} did not happen within {seconds} s")


def _rss_mb(pid: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def test_row_limit_bounds_what_the_server_keeps(secured: Secured) -> None:
    wide = {
        "statement": "SELECT i, repeat('x', 200) || i AS pad FROM range(5000000) t(i)",
        "row_limit": 1,
        "wait_timeout": "50s",
    }
    first = secured.call("alice", "POST", STATEMENTS, json=wide)
    pid = first.headers["x-aifuncs-worker"]
    assert first.json()["status"]["state"] == "SUCCEEDED"
    before = _rss_mb(pid)
    for _ in range(20):
        answer = secured.call("alice", "POST", STATEMENTS, json=wide).json()
        assert answer["status"]["state"] == "SUCCEEDED", answer["status"]
        assert answer["result"]["data_array"] == [["0", "x" * 200 + "0"]]
        assert answer["manifest"]["truncated"] is True and answer["manifest"]["total_row_count"] == 1
    grown = _rss_mb(pid) - before
    assert grown < 300, f"the server grew by {grown:.0f} MB for 20 one-row answers"


def test_a_large_result_comes_in_chunks_up_to_a_cap(principals: dict[str, str], serve: Serve) -> None:
    with serve(args=["--statement-result-mb", "3"]) as url:
        alice = principals["alice"]
        answer = _post(
            url, alice, {"statement": "SELECT i FROM range(300000) t(i)", "wait_timeout": "50s"}
        ).json()
        manifest = answer["manifest"]
        assert answer["status"]["state"] == "SUCCEEDED" and manifest["truncated"] is False
        assert manifest["total_chunk_count"] > 1 and manifest["total_row_count"] == 300000
        rows, chunk = [], answer["result"]
        while True:  # as databricks-sdk walks them
            assert chunk["row_offset"] == len(rows)
            rows += chunk["data_array"]
            if "next_chunk_internal_link" not in chunk:
                break
            chunk = _get(url, alice, chunk["next_chunk_internal_link"]).json()
        assert [int(r[0]) for r in rows] == list(range(300000))
        assert _get(url, alice, f"{STATEMENTS}/{answer['statement_id']}/result/chunks/99").status_code == 404

        too_big = _post(url, alice, {"statement": "SELECT i FROM range(5000000) t(i)", "wait_timeout": "50s"})
        status = too_big.json()["status"]
        assert status["state"] == "FAILED" and "over 3 MB" in status["error"]["message"]
        assert "row_limit" in status["error"]["message"]
        capped = _post(
            url,
            alice,
            {"statement": "SELECT i FROM range(5000000) t(i)", "byte_limit": 4000, "wait_timeout": "50s"},
        ).json()
        assert capped["status"]["state"] == "SUCCEEDED" and capped["manifest"]["truncated"] is True
        assert 0 < capped["manifest"]["total_row_count"] <= 500  # 8 bytes a row


def test_a_statement_past_the_time_limit_is_cancelled(principals: dict[str, str], serve: Serve) -> None:
    with serve(args=["--statement-timeout-s", "3"]) as url:
        started = time.monotonic()
        answer = _post(url, principals["mallory"], {"statement": FOREVER, "wait_timeout": "30s"}).json()
        took = time.monotonic() - started
        assert answer["status"]["state"] == "CANCELED"
        assert answer["status"]["error"]["error_code"] == "DEADLINE_EXCEEDED"
        assert "time limit of 3 s" in answer["status"]["error"]["message"]
        assert 3 <= took < 25, took
        polled = _get(url, principals["mallory"], f"{STATEMENTS}/{answer['statement_id']}").json()
        assert polled["status"]["state"] == "CANCELED"
        # the slot it held is free again: the next statement runs
        again = _post(url, principals["mallory"], {"statement": "SELECT 42", "wait_timeout": "30s"}).json()
        assert again["result"]["data_array"] == [["42"]]


def test_waiting_statements_hold_no_request_thread(principals: dict[str, str], serve: Serve) -> None:
    waiting = 45  # beyond the 40 threads the server's requests share
    args = ["--statement-concurrency", str(waiting), "--statement-timeout-s", "30"]
    mallory = principals["mallory"]
    with serve(args=args) as url:
        alice = {"Authorization": f"Bearer {principals['alice']}"}
        endpoints = url + "/api/2.0/serving-endpoints"
        quick = [_timed(lambda: httpx.get(endpoints, headers=alice)) for _ in range(5)]
        answers: list[dict[str, Any]] = []

        def wait_for_one() -> None:
            while True:  # refused only while a probe below holds the last place: then again
                answer = _post(url, mallory, {"statement": FOREVER, "wait_timeout": "50s"})
                if answer.status_code != 429:
                    answers.append(answer.json())
                    return

        threads = [threading.Thread(target=wait_for_one, daemon=True) for _ in range(waiting)]
        for thread in threads:
            thread.start()

        def all_admitted() -> bool:  # one more is refused once all of them wait in the server
            probe = _post(url, mallory, {"statement": "SELECT 1", "wait_timeout": "0s"}, timeout=5)
            if probe.status_code == 200:
                cancel = f"{STATEMENTS}/{probe.json()['statement_id']}/cancel"
                httpx.post(url + cancel, headers={"Authorization": f"Bearer {mallory}"})
            return probe.status_code == 429

        _until(all_admitted, what=f"{waiting} statements waiting")
        loaded = [_timed(lambda: httpx.get(endpoints, headers=alice)) for _ in range(5)]
        assert answers == []  # they all still wait for their statements
        for thread in threads:  # the time limit ends them all, those still waiting for a slot too
            thread.join(timeout=90)
    assert len(answers) == waiting
    assert {a["status"]["error"]["error_code"] for a in answers} == {"DEADLINE_EXCEEDED"}
    assert max(loaded) < 1.0 + statistics.median(quick), (quick, loaded)


def _timed(request: Callable[[], httpx.Response]) -> float:
    started = time.monotonic()
    assert request().status_code == 200
    return time.monotonic() - started


def test_one_principal_may_run_only_so_many_statements(secured: Secured) -> None:
    mine = []
    for _ in range(4):  # the default cap
        answer = secured.call(
            "mallory", "POST", STATEMENTS, json={"statement": FOREVER, "wait_timeout": "0s"}
        )
        assert answer.status_code == 200 and answer.json()["status"]["state"] in ("PENDING", "RUNNING")
        mine.append(answer.json()["statement_id"])
    refused = secured.call("mallory", "POST", STATEMENTS, json={"statement": "SELECT 1"})
    assert refused.status_code == 429 and refused.json()["error_code"] == "REQUEST_LIMIT_EXCEEDED"
    assert "4 statements pending or running" in refused.json()["message"]
    others = secured.call("alice", "POST", STATEMENTS, json={"statement": "SELECT 1", "wait_timeout": "30s"})
    assert others.json()["result"]["data_array"] == [["1"]]  # the cap is each principal's own
    assert secured.call("mallory", "POST", f"{STATEMENTS}/{mine[0]}/cancel").status_code == 200
    _until(
        lambda: (
            secured.call("mallory", "GET", f"{STATEMENTS}/{mine[0]}").json()["status"]["state"] == "CANCELED"
        ),
        what="the cancel",
    )
    again = secured.call("mallory", "POST", STATEMENTS, json={"statement": "SELECT 2", "wait_timeout": "30s"})
    assert again.status_code == 200
    for statement_id in mine[1:]:
        secured.call("mallory", "POST", f"{STATEMENTS}/{statement_id}/cancel")


def test_an_unknown_dialect_is_refused_at_once(secured: Secured) -> None:
    answer = secured.call(
        "alice",
        "POST",
        STATEMENTS,
        json={"statement": "SELECT 1", "dialect": "klingon", "wait_timeout": "0s"},
    )
    assert answer.status_code == 400 and answer.json()["error_code"] == "INVALID_PARAMETER_VALUE"
    assert "klingon" in answer.json()["message"] and "databricks" in answer.json()["message"]


@pytest.mark.parametrize(
    "redefinition",
    [
        "CREATE/**/MACRO aifuncs_current_principal() AS 'admin'",
        "CREATE OR REPLACE MACRO \"aifuncs_current_principal\"() AS 'admin'",
        "CREATE TEMP MACRO main.\"AIFUNCS_CURRENT_PRINCIPAL\"() AS 'admin'",
        "CREATE -- a comment\n OR REPLACE FUNCTION aifuncs_current_principal() AS 'admin'",
        "CREATE\tTEMPORARY/* x */MACRO __aifuncs_binding() AS 'x'",
        "CREATE VIEW aifuncs_usage AS SELECT 1 AS nothing",
    ],
)
def test_aifuncs_functions_cannot_be_redefined(secured: Secured, redefinition: str) -> None:
    for dialect in ("duckdb", "databricks"):
        script = f"{redefinition}; SELECT aifuncs_current_principal() AS who"
        answer = secured.call(
            "alice", "POST", STATEMENTS, json={"statement": script, "dialect": dialect, "wait_timeout": "30s"}
        ).json()
        assert answer["status"]["state"] == "FAILED", (dialect, answer)
        assert "aifuncs_" in answer["status"]["error"]["message"]
        assert "Choose another name" in answer["status"]["error"]["message"]
    who = secured.call("alice", "POST", STATEMENTS, json={"statement": "SELECT aifuncs_current_principal()"})
    assert who.json()["result"]["data_array"] == [["alice"]]
    use = secured.call(
        "alice",
        "POST",
        STATEMENTS,
        json={"statement": "CREATE MACRO twice(x) AS x * 2; SELECT twice(21), aifuncs_current_principal()",
              "dialect": "duckdb"},
    )  # fmt: skip
    assert use.json()["result"]["data_array"] == [["42", "alice"]]  # other names, and calls, are fine


def test_each_statement_has_a_private_temp_folder(secured: Secured) -> None:
    where = secured.call(
        "alice", "POST", STATEMENTS, json={"statement": "SELECT current_setting('temp_directory')"}
    ).json()["result"]["data_array"][0][0]
    assert where != ".tmp" and not os.path.exists(where)  # its own, removed with it
    pattern = os.path.join(tempfile.gettempdir(), "aifuncs-statement-*", "x.csv")
    before = set(glob.glob(pattern))
    script = (
        "SET VARIABLE t = current_setting('temp_directory') || '/x.csv';"
        " COPY (SELECT 'alice-private' AS s) TO (getvariable('t'));"
        f" {FOREVER}"
    )
    running = secured.call(
        "alice", "POST", STATEMENTS, json={"statement": script, "dialect": "duckdb", "wait_timeout": "0s"}
    ).json()
    path = _until(lambda: set(glob.glob(pattern)) - before, what="alice's file in her temp folder").pop()
    assert Path(path).read_text().splitlines() == ["s", "alice-private"]
    for reader in ("mallory", "bob"):  # other principals' statements
        read = secured.call(
            reader,
            "POST",
            STATEMENTS,
            json={
                "statement": f"SELECT * FROM read_csv('{path}')",
                "dialect": "duckdb",
                "wait_timeout": "30s",
            },
        ).json()
        assert (
            read["status"]["state"] == "FAILED" and "Permission Error" in read["status"]["error"]["message"]
        )
    for shared in ("COPY (SELECT 1) TO '.tmp/y.csv'", "SELECT * FROM read_csv('.tmp/x.csv')"):
        answer = secured.call(
            "mallory",
            "POST",
            STATEMENTS,
            json={"statement": shared, "dialect": "duckdb", "wait_timeout": "30s"},
        ).json()
        assert answer["status"]["state"] == "FAILED", shared
    secured.call("alice", "POST", f"{STATEMENTS}/{running['statement_id']}/cancel")
    _until(lambda: not os.path.exists(os.path.dirname(path)), what="the temp folder's removal")
