"""Encryption at rest: a canary sent in 100 prompts reaches no file under AIFUNCS_HOME; the right key opens
every row, a wrong key, a flipped byte or a swapped row never gives wrong data; rotation rewraps keys only."""

from __future__ import annotations

import os
import sqlite3
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from servers import FakeServer

import aifuncs
import aifuncs.governance as gov
from aifuncs.cli import main
from aifuncs.errors import ConfigError
from aifuncs.governance.keys import EncryptionError, KeyRing, generate_key, parse_key
from aifuncs.jobs import run as run_job

CANARY = "zebra-canary-7f3a91c2"


@pytest.fixture
def key(monkeypatch: pytest.MonkeyPatch) -> str:
    value = generate_key()
    monkeypatch.setenv("AIFUNCS_ENCRYPTION_KEY", value)
    monkeypatch.delenv("AIFUNCS_ENCRYPTION_KEY_FILE", raising=False)
    return value


@pytest.fixture
def server() -> Iterator[FakeServer]:
    with FakeServer() as running:
        yield running


def ask_100(con: object, tmp_path: Path) -> list[tuple[str]]:
    aifuncs.sql(
        con,
        f"CREATE OR REPLACE TABLE prompts AS SELECT '{CANARY} question ' || i AS body FROM range(100) t(i)",
    )  # type: ignore[arg-type]
    rows = aifuncs.sql(
        con, "SELECT ai_query('llm', body, modelParameters => {'temperature': 0}) FROM prompts"
    ).fetchall()  # type: ignore[arg-type]
    job = tmp_path / "job.sql"  # a job's checkpoint holds answers too while it runs
    job.write_text(
        "SELECT ai_query('llm', body || ' again', modelParameters => {'temperature': 0.7}) FROM prompts"
    )
    database = tmp_path / "prompts.duckdb"
    aifuncs.sql(
        con,
        f"ATTACH '{database}' AS saved; CREATE OR REPLACE TABLE saved.prompts AS SELECT * FROM prompts; DETACH saved",
    )  # type: ignore[arg-type]
    assert run_job(job, db=database).exit_code == 0
    database.unlink()  # the job's database is the user's, not aifuncs' state
    return rows


def test_a_canary_in_100_prompts_reaches_no_file(
    key: str, server: FakeServer, home: Path, tmp_path: Path
) -> None:
    aifuncs.endpoints.create("llm", kind="openai", model="m", base_url=server.url + "/v1")
    aifuncs.endpoints.put_ai_gateway("llm", {"inference_table_config": {"enabled": True}})
    con = aifuncs.connect()
    rows = ask_100(con, tmp_path)
    assert sorted(r[0] for r in rows) == sorted(f"echo: {CANARY} question {i}" for i in range(100))
    payloads = con.sql("SELECT request, response FROM aifuncs_payloads").fetchall()  # the right key opens all
    assert len(payloads) == 200 and all(
        CANARY in request and CANARY in response for request, response in payloads
    )
    again = aifuncs.sql(
        con, "SELECT ai_query('llm', body, modelParameters => {'temperature': 0}) FROM prompts"
    )
    before = server.stats.requests
    assert sorted(again.fetchall()) == sorted(rows)  # kept answers open too: nothing asked again
    assert server.stats.requests == before
    aifuncs.runtime.default_runtime().usage.flush()
    files = [p for p in home.rglob("*") if p.is_file()]
    assert any(p.name.endswith("-wal") for p in files)  # WAL files are searched too
    leaked = [p for p in files if CANARY.encode() in p.read_bytes()]
    assert leaked == []
    loose = [p for p in files if stat.S_IMODE(p.stat().st_mode) & 0o077]
    assert loose == [] and stat.S_IMODE(home.stat().st_mode) == 0o700  # the owner's alone


def test_without_a_key_the_canary_is_in_clear(
    server: FakeServer, home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AIFUNCS_ENCRYPTION_KEY", raising=False)
    aifuncs.endpoints.create("llm", kind="openai", model="m", base_url=server.url + "/v1")
    aifuncs.endpoints.put_ai_gateway("llm", {"inference_table_config": {"enabled": True}})
    con = aifuncs.connect()
    ask_100(con, tmp_path)
    con.sql("SELECT count(*) FROM aifuncs_payloads").fetchall()
    assert any(
        CANARY.encode() in p.read_bytes() for p in home.rglob("*.db*") if p.is_file()
    )  # as the README says


def test_a_wrong_key_a_flipped_byte_or_a_swapped_row_never_gives_wrong_data(
    key: str, server: FakeServer, home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    aifuncs.endpoints.create("llm", kind="openai", model="m", base_url=server.url + "/v1")
    aifuncs.endpoints.put_ai_gateway("llm", {"inference_table_config": {"enabled": True}})
    con = aifuncs.connect()
    ask_100(con, tmp_path)
    view = "SELECT count(*) FROM aifuncs_payloads"
    assert con.sql(view).fetchall() == [(200,)]  # the query's 100 requests and the job's
    monkeypatch.setenv("AIFUNCS_ENCRYPTION_KEY", generate_key())
    with pytest.raises(Exception, match="is not the one .* was made with"):
        con.sql(view).fetchall()
    monkeypatch.setenv("AIFUNCS_ENCRYPTION_KEY", key)
    assert con.sql(view).fetchall() == [(200,)]  # nothing was changed by the failed read
    with sqlite3.connect(home / "payloads.db") as db:
        (first, a), (second, b) = db.execute("SELECT rowid, request FROM payloads LIMIT 2").fetchall()
        db.execute("UPDATE payloads SET request = ? WHERE rowid = ?", (b, first))
        db.execute("UPDATE payloads SET request = ? WHERE rowid = ?", (a, second))
    with pytest.raises(Exception, match="does not open: it was changed, or moved from another row"):
        con.sql(view).fetchall()
    with sqlite3.connect(home / "answers.db") as db:
        key_bytes, value = db.execute("SELECT key, value FROM answers LIMIT 1").fetchone()
        flipped = value[:-1] + bytes([value[-1] ^ 1])
        db.execute("UPDATE answers SET value = ? WHERE key = ?", (flipped, key_bytes))
    with pytest.raises(Exception, match="does not open"):
        aifuncs.sql(
            con, "SELECT ai_query('llm', body, modelParameters => {'temperature': 0}) FROM prompts"
        ).fetchall()


def test_key_files_must_be_private_and_keys_well_formed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "aifuncs.key"
    path.write_text(generate_key())
    path.chmod(0o644)
    monkeypatch.delenv("AIFUNCS_ENCRYPTION_KEY", raising=False)
    monkeypatch.setenv("AIFUNCS_ENCRYPTION_KEY_FILE", str(path))
    with pytest.raises(ConfigError, match="can be read by others .*chmod 600"):
        gov.keyring()
    path.chmod(0o600)
    assert gov.keyring() is not None
    with pytest.raises(ConfigError, match="not a 256-bit key"):
        parse_key("too-short", "AIFUNCS_ENCRYPTION_KEY")
    assert parse_key("ab" * 32, "hex") == bytes([0xAB]) * 32


def test_rotation_rewraps_the_keys_of_100k_rows_in_under_a_second(tmp_path: Path) -> None:
    old, new = parse_key(generate_key(), "old"), parse_key(generate_key(), "new")
    ring = KeyRing(tmp_path / "keys.db", old)
    sealed = [ring.seal(f"row {i}".encode(), f"row {i}".encode()) for i in range(100_000)]
    began = time.perf_counter()
    assert ring.rotate(new) == 1
    assert time.perf_counter() - began < 1.0
    fresh = KeyRing(tmp_path / "keys.db", new)  # the old key is gone: the new one opens every row
    assert all(fresh.open(v, f"row {i}".encode()) == f"row {i}".encode() for i, v in enumerate(sealed))
    with pytest.raises(EncryptionError, match="is not the one"):
        KeyRing(tmp_path / "keys.db", old).open(sealed[0], b"row 0")


def test_rotating_from_the_command_line(
    key: str, home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    aifuncs.endpoints.create(
        "shout", kind="python", function="sample_models:shouted", input_format="arrow", returns="VARCHAR"
    )
    aifuncs.endpoints.put_ai_gateway("shout", {"inference_table_config": {"enabled": True}})
    con = aifuncs.connect()
    aifuncs.sql(con, "SELECT ai_query('shout', 'secret plan')").fetchall()
    assert con.sql("SELECT request FROM aifuncs_payloads").fetchall() == [('{"inputs":["secret plan"]}',)]
    new_file = tmp_path / "new.key"
    new_file.write_text(generate_key())
    os.chmod(new_file, 0o600)
    assert main(["keys", "rotate", "--new-key-file", str(new_file)]) == 0
    assert "Rewrapped 1 data key" in capsys.readouterr().out
    monkeypatch.delenv("AIFUNCS_ENCRYPTION_KEY")
    monkeypatch.setenv("AIFUNCS_ENCRYPTION_KEY_FILE", str(new_file))
    assert aifuncs.connect().sql("SELECT request FROM aifuncs_payloads").fetchall() == [
        ('{"inputs":["secret plan"]}',)
    ]
    assert [e.action for e in gov.audit_log()][-1] == "keys.rotate"
