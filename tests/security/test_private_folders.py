"""Every folder the project makes under AIFUNCS_HOME is its owner's alone (0700), whatever the umask: a job's
checkpoint folder, the answer store, users' function specs, the home itself."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

import aifuncs
from aifuncs.cli import main


@pytest.fixture
def open_umask() -> Iterator[None]:
    previous = os.umask(0)  # the worst case: every mode as asked, nothing narrowed
    try:
        yield
    finally:
        os.umask(previous)


def test_every_folder_under_the_home_is_0700_under_umask_000(
    home: Path, tmp_path: Path, open_umask: None
) -> None:
    aifuncs.endpoints.create("doubler", kind="python", function="sample_models:doubled", returns="DOUBLE")
    job = tmp_path / "nightly.sql"
    job.write_text("SELECT ai_query('doubler', range::DOUBLE, cache => true) AS r FROM range(3)")
    assert main(["run", str(job), "--json"]) == 0
    aifuncs.functions.define(
        'name = "ai_shout"\nkind = "task"\nreturns = "VARCHAR"\nanswer = "text"\nprompt = "Shout {text}"\n'
        '[[params]]\nname = "text"\nkind = "column"\nrequired = true\n'
    )  # users' own function specs: AIFUNCS_HOME/udfs

    folders = [home, *(p for p in home.rglob("*") if p.is_dir())]
    assert any(p.name == "jobs" for p in folders), "the job made no checkpoint folder to check"
    loose = {str(p.relative_to(home)): oct(stat.S_IMODE(p.stat().st_mode)) for p in folders
             if stat.S_IMODE(p.stat().st_mode) & 0o077}  # fmt: skip
    assert loose == {}
    files = [p for p in home.rglob("*") if p.is_file()]
    assert files and all(stat.S_IMODE(p.stat().st_mode) & 0o077 == 0 for p in files), [
        (str(p.relative_to(home)), oct(stat.S_IMODE(p.stat().st_mode))) for p in files
        if stat.S_IMODE(p.stat().st_mode) & 0o077
    ]  # fmt: skip
