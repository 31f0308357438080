"""`aifuncs home migrate --to postgresql://...`: a home made on SQLite copied into the shared database, every
table counted and checked, the copy working there (a token, an endpoint's history, the audit chain, a sealed
secret, usage and inference rows), a second run copying nothing, and the password never printed."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

import aifuncs
import aifuncs.governance as gov
from aifuncs.governance import current
from aifuncs.governance.keys import generate_key, keyring
from aifuncs.governance.secrets import Secrets

CANARY = "narwhal-canary-5e21"


def _migrate(home: Path, url: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "AIFUNCS_HOME": str(home)}
    env.pop("AIFUNCS_DATABASE_URL", None)
    return subprocess.run(
        [sys.executable, "-m", "aifuncs.cli", "home", "migrate", "--to", url],
        capture_output=True, text=True, timeout=300, env=env,
    )  # fmt: skip


def _counts(stdout: str) -> dict[str, tuple[int, int, int]]:
    found = re.findall(r"^(\w+)\s+(\d+)\s+(\d+)\s+(\d+)$", stdout, re.M)
    return {t: (int(a), int(b), int(c)) for t, a, b, c in found}


def test_a_home_migrates_whole_and_a_second_run_copies_nothing(
    pg_url: str, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AIFUNCS_DATABASE_URL", raising=False)
    monkeypatch.delenv("AIFUNCS_TOKEN", raising=False)
    monkeypatch.setenv("AIFUNCS_ENCRYPTION_KEY", generate_key())
    monkeypatch.delenv("AIFUNCS_ENCRYPTION_KEY_FILE", raising=False)
    # a home with some of everything, on SQLite
    gov.create_user("alice")
    gov.create_group("analysts", members=["alice"])
    token = gov.create_token("alice")
    aifuncs.endpoints.create(
        "shout", kind="python", function="sample_models:shouted", input_format="arrow", returns="VARCHAR"
    )
    aifuncs.endpoints.update("shout", description="the second version")
    aifuncs.endpoints.update_permissions("shout", [{"user_name": "alice", "permission_level": "CAN_QUERY"}])
    aifuncs.endpoints.put_ai_gateway(
        "shout",
        {"rate_limits": [{"calls": 100, "key": "user"}], "inference_table_config": {"enabled": True}},
    )
    secrets = Secrets(home / "catalog.db", current().principal, keyring())
    secrets.create_scope("team")
    secrets.put("team", "api-key", string_value=CANARY)
    con = aifuncs.connect(token=token)
    assert len(aifuncs.sql(con, "SELECT ai_query('shout', 'x' || i) FROM range(3) t(i)").fetchall()) == 3
    audit_before = [e.hash for e in gov.audit_log()]
    usage_before = len(aifuncs.connect().sql("SELECT * FROM aifuncs_usage").fetchall())

    first = _migrate(home, pg_url)
    assert first.returncode == 0, first.stderr
    password = pg_url.split(":")[2].split("@")[0]
    assert password not in first.stdout + first.stderr
    counts = _counts(first.stdout)
    for table in ("endpoints", "endpoint_versions", "gateways", "principals", "members", "tokens",
                  "permissions", "audit", "secret_scopes", "secret_values", "usage", "payloads"):  # fmt: skip
        source, copied, present = counts[table]
        assert source > 0 and copied == source == present, (table, counts[table])
    assert counts["endpoint_versions"][0] == 2 and counts["usage"][0] == usage_before
    assert "verified" in first.stdout

    again = _migrate(home, pg_url)
    assert again.returncode == 0, again.stderr
    assert all(
        copied == 0 and present == source for source, copied, present in _counts(again.stdout).values()
    )

    # the database now serves what the home held
    monkeypatch.setenv("AIFUNCS_DATABASE_URL", pg_url)
    other = home.parent / "another-host"
    monkeypatch.setenv("AIFUNCS_HOME", str(other))  # a host that never saw the home's files
    (other / "keys.db").parent.mkdir(parents=True, exist_ok=True)
    (other / "keys.db").write_bytes((home / "keys.db").read_bytes())  # data keys stay per host
    assert [e.hash for e in gov.audit_log()] == audit_before and gov.verify_audit() is None
    assert [v["version"] for v in aifuncs.endpoints.versions("shout")] == [1, 2]
    there = aifuncs.connect(token=token)  # alice's token, her grant, her rows
    assert aifuncs.sql(there, "SELECT ai_query('shout', 'y')").fetchall() == [("Y",)]
    assert len(there.sql("SELECT * FROM aifuncs_usage").fetchall()) == usage_before + 1
    assert len(there.sql("SELECT * FROM aifuncs_payloads").fetchall()) == 2
    assert (
        Secrets(other / "catalog.db", current().principal, keyring()).get("team", "api-key")
        == CANARY.encode()
    )
    gov.create_token("alice")  # a new token's id follows the copied ones
    with psycopg.connect(pg_url) as conn:
        stored = repr(conn.execute("SELECT * FROM secret_values").fetchall())
        assert conn.execute("SELECT count(*) FROM tokens").fetchone() == (2,)
    assert CANARY not in stored  # sealed as it was


def test_migrate_names_what_is_wrong(pg_url: str, home: Path, tmp_path: Path) -> None:
    empty = _migrate(tmp_path / "nothing-here", pg_url)
    assert empty.returncode != 0 and "holds no catalog.db" in empty.stderr and "Traceback" not in empty.stderr
    wrong = _migrate(home, "mysql://u:hunter2secret@h/db")
    assert wrong.returncode != 0 and "hunter2secret" not in wrong.stderr and "postgresql://" in wrong.stderr
