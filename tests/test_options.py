"""Options objects: `SpendingLimits` and `RequestOptions` do what the seven keywords do, in every public
function that takes them (`aifuncs.sql`, the pandas accessors, `jobs.run`), and the two forms do not mix."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
from servers import FakeServer

import aifuncs
from aifuncs import RequestOptions, SpendingLimits, jobs
from aifuncs.errors import ArgumentError, BudgetExceeded
from aifuncs.jobs import Exit
from aifuncs.runtime import default_runtime

QUERY = "SELECT range AS i, ai_query('chat', 'row ' || range) AS reply FROM range(6) ORDER BY i"


@pytest.fixture
def chat(home: Path) -> Iterator[FakeServer]:
    with FakeServer() as server:
        aifuncs.endpoints.create("chat", kind="openai", base_url=server.url + "/v1", model="m")
        yield server


def _usage_by_label() -> dict[str, int]:
    rows: dict[str, int] = {}
    for row in default_runtime().usage.read():
        key = f"{row['usage_context']}|{row['client_request_id']}"
        rows[key] = rows.get(key, 0) + row["rows"]
    return rows


def test_sql_gives_the_same_answers_usage_and_refusals_with_keywords_or_objects(chat: FakeServer) -> None:
    con = aifuncs.connect()
    keywords = aifuncs.sql(
        con,
        QUERY,
        max_requests=100,
        usage_context={"form": "keywords"},
        client_request_id="k",
        progress=False,
    )
    objects = aifuncs.sql(
        con,
        QUERY,
        limits=SpendingLimits(max_requests=100),
        options=RequestOptions(usage_context={"form": "objects"}, client_request_id="o", progress=False),
    )
    assert keywords is not None and objects is not None
    first, second = keywords.fetchall(), objects.fetchall()
    assert first == second and len(first) == 6
    # Both forms' labels and client ids reached the usage log, each on its own rows.
    usage = _usage_by_label()
    assert usage[f"{json.dumps({'form': 'keywords'})}|k"] == 6
    assert usage[f"{json.dumps({'form': 'objects'})}|o"] == 6

    # A budget refuses the query before anything is sent, given either way.
    sent = chat.stats.requests
    with pytest.raises(BudgetExceeded) as by_keyword:
        aifuncs.sql(con, QUERY.replace("row", "again"), max_requests=1)
    with pytest.raises(BudgetExceeded) as by_object:
        aifuncs.sql(con, QUERY.replace("row", "again"), limits=SpendingLimits(max_requests=1))
    assert str(by_keyword.value) == str(by_object.value)
    assert chat.stats.requests == sent
    con.close()


def test_pandas_takes_the_objects_as_it_takes_the_keywords(chat: FakeServer) -> None:
    texts = pd.Series([f"text {i}" for i in range(5)])
    keywords = texts.ai.query("chat", max_requests=50, progress=False)
    objects = texts.ai.query(
        "chat", limits=SpendingLimits(max_requests=50), options=RequestOptions(progress=False)
    )
    pd.testing.assert_series_equal(keywords, objects)
    # The object's labels reach the usage log (the keywords of pandas have none: the object adds them).
    texts.ai.gen(options=RequestOptions(usage_context={"from": "pandas"}))
    assert _usage_by_label()[f"{json.dumps({'from': 'pandas'})}|None"] == 5
    with pytest.raises(BudgetExceeded):
        pd.Series(["a", "b", "c"]).ai.gen(limits=SpendingLimits(max_requests=1))


def test_a_job_takes_its_budget_as_an_object(chat: FakeServer, tmp_path: Path) -> None:
    job = tmp_path / "nightly.sql"
    job.write_text("SELECT ai_query('chat', 'job row ' || range) AS reply FROM range(4)")
    refused = jobs.run(job, limits=SpendingLimits(max_requests=2))
    assert refused.exit_code == Exit.BUDGET and refused.requests == 0
    done = jobs.run(job, limits=SpendingLimits(max_requests=4))
    assert done.exit_code == Exit.OK and done.requests == 4


def test_a_setting_given_both_ways_or_an_object_of_another_type_is_refused_clearly(home: Path) -> None:
    con = aifuncs.connect()
    with pytest.raises(ArgumentError, match="max_requests is given both as a keyword and in SpendingLimits"):
        aifuncs.sql(con, "SELECT 1", limits=SpendingLimits(max_requests=3), max_requests=3)
    with pytest.raises(ArgumentError, match="wait_for_limits is given both"):
        aifuncs.sql(con, "SELECT 1", options=RequestOptions(wait_for_limits=False), wait_for_limits=True)
    with pytest.raises(ArgumentError, match="Expected an aifuncs.SpendingLimits, not dict"):
        aifuncs.sql(con, "SELECT 1", limits={"max_requests": 3})  # type: ignore[arg-type]
    with pytest.raises(ArgumentError, match="max_cost_usd is a number of dollars"):
        SpendingLimits(max_cost_usd=-1)
    with pytest.raises(ArgumentError, match="max_requests is a whole number"):
        SpendingLimits(max_requests="10")  # type: ignore[arg-type]
    with pytest.raises(ArgumentError, match="Expected an aifuncs.SpendingLimits"):
        jobs.run("missing.sql", limits=RequestOptions())  # type: ignore[arg-type]
    con.close()
