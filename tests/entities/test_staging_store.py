"""A config update's staging in the catalog on both backends (SQLite files and the shared PostgreSQL database):
pending configs, the server processes that load them, their reports, the switch and its failure, and what a
deleted endpoint leaves behind."""

from __future__ import annotations

import time

import pytest

import aifuncs
from aifuncs.catalog import default_catalog
from aifuncs.errors import ConfigError, UnknownEndpoint

pytestmark = pytest.mark.usefixtures("backend")  # each test on SQLite and on PostgreSQL


def _make(name: str = "m") -> None:
    aifuncs.endpoints.create(name, kind="python", function="sample_models:doubled", returns="DOUBLE")


def test_a_staged_config_is_pending_then_applied_as_the_next_version() -> None:
    _make()
    catalog = default_catalog()
    staged = catalog.stage("m", function="sample_models:doubled", returns="BIGINT", replace=True)
    assert staged.endpoint.version == 2 and staged.state == "IN_PROGRESS"
    assert aifuncs.endpoints.get("m").version == 1  # the old config serves meanwhile
    [listed] = catalog.staged_configs()
    assert listed.requested_at == staged.requested_at and listed.endpoint.options["returns"] == "BIGINT"
    pending = catalog.pending("m")
    assert pending is not None and pending.endpoint.version == 2
    catalog.report_load(staged, "host:1", None)
    catalog.report_load(staged, "host:2", "served entity 'm' failed to load: boom")
    catalog.report_load(staged, "host:1", None)  # a second report replaces the first
    assert catalog.loads(staged) == {
        "host:1": ("READY", ""),
        "host:2": ("FAILED", "served entity 'm' failed to load: boom"),
    }
    applied = catalog.apply_staged(staged)
    assert applied.version == 2 and applied.options["returns"] == "BIGINT"
    assert catalog.pending("m") is None and catalog.staged_configs() == []
    with pytest.raises(ConfigError, match="replaced by a newer one"):
        catalog.apply_staged(staged)  # once only


def test_a_newer_stage_replaces_the_pending_one_and_a_failure_keeps_the_old_config() -> None:
    _make()
    catalog = default_catalog()
    first = catalog.stage("m", function="sample_models:doubled", returns="BIGINT", replace=True)
    time.sleep(0.002)  # requested_at has millisecond resolution
    second = catalog.stage("m", function="sample_models:doubled", returns="VARCHAR", replace=True)
    assert second.requested_at != first.requested_at
    with pytest.raises(ConfigError):
        catalog.apply_staged(first)
    catalog.fail_staged(second, "served entity 'm' did not load within 5 s")
    pending = catalog.pending("m")
    assert pending is not None and pending.state == "UPDATE_FAILED" and "did not load" in pending.message
    assert catalog.staged_configs() == []  # a failed config is not loaded again
    assert aifuncs.endpoints.get("m").version == 1


def test_serving_processes_are_seen_renewed_and_forgotten() -> None:
    catalog = default_catalog()
    catalog.seen_serving("host:1")
    catalog.seen_serving("host:2")
    catalog.seen_serving("host:1")
    assert catalog.serving_processes(10) == ["host:1", "host:2"]
    catalog.forget_serving("host:2")
    assert catalog.serving_processes(10) == ["host:1"]
    time.sleep(0.05)
    assert catalog.serving_processes(0.01) == []  # not seen lately: not waited for


def test_a_deleted_endpoint_leaves_no_pending_config_or_load_reports() -> None:
    _make()
    catalog = default_catalog()
    staged = catalog.stage("m", function="sample_models:doubled", returns="BIGINT", replace=True)
    catalog.report_load(staged, "host:1", None)
    aifuncs.endpoints.delete("m")
    assert catalog.staged_configs() == []
    with pytest.raises(UnknownEndpoint):
        catalog.apply_staged(staged)
    _make()  # made again under the same name: nothing of the old one's update is its
    assert catalog.pending("m") is None and catalog.loads(staged) == {}


def test_processes_long_unseen_are_forgotten_as_others_are_seen() -> None:
    catalog = default_catalog()
    with catalog._store._write() as db:  # a process killed outright a day ago: it never forgot itself
        db.execute(
            "INSERT INTO serving_processes VALUES (?, ?, ?)",
            ("host:killed", "2000-01-01T00:00:00.000+00:00", "2000-01-01T00:00:00.000+00:00"),
        )
    assert catalog.serving_processes(10**10) == ["host:killed"]
    catalog.seen_serving("host:1")
    assert catalog.serving_processes(10**10) == ["host:1"]


def test_load_reports_of_the_last_config_stay_and_older_ones_go() -> None:
    # The last config's reports are what an operator reads after a switch; a later config's reports replace them
    _make()
    catalog = default_catalog()
    staged = catalog.stage("m", function="sample_models:doubled", returns="BIGINT", replace=True)
    catalog.report_load(staged, "host:1", None)
    catalog.apply_staged(staged)
    assert catalog.loads(staged) == {"host:1": ("READY", "")}
    time.sleep(0.002)
    later = catalog.stage("m", function="sample_models:doubled", returns="VARCHAR", replace=True)
    catalog.report_load(later, "host:1", "boom")
    assert catalog.loads(staged) == {} and catalog.loads(later) == {"host:1": ("FAILED", "boom")}


def test_a_roll_out_whose_config_was_replaced_stops_waiting_for_other_processes() -> None:
    # Another server process runs and never reports on the first config (it loads the newer one instead): the
    # first roll-out must end once its config is replaced, not poll the catalog until its load timeout.
    import asyncio

    from aifuncs.workers import ModelWorkers, others_loaded

    _make()
    catalog = default_catalog()
    first = catalog.stage("m", function="sample_models:doubled", returns="BIGINT", replace=True)
    catalog.seen_serving("other-host:1")
    workers = ModelWorkers()

    async def roll_out() -> str | None:
        waiting = asyncio.ensure_future(
            others_loaded(catalog, workers, first, asyncio.get_running_loop().time() + 600)
        )
        await asyncio.sleep(0.3)
        assert not waiting.done()  # the other process has not reported yet
        time.sleep(0.002)
        catalog.stage("m", function="sample_models:doubled", returns="VARCHAR", replace=True)
        return await asyncio.wait_for(waiting, 10)

    with pytest.raises(ConfigError, match="replaced by a newer one"):
        asyncio.run(roll_out())
