"""`aifuncs whoami|users|groups|service-principals|tokens|permissions` as a user types them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from aifuncs.cli import main
from aifuncs.governance import identity


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def setup(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    monkeypatch.delenv("AIFUNCS_TOKEN", raising=False)
    assert run(capsys, "users", "create", "alice")[0] == 0
    assert run(capsys, "users", "create", "bob")[0] == 0
    assert run(capsys, "service-principals", "create", "nightly-etl")[0] == 0
    assert run(capsys, "groups", "create", "analysts", "--member", "alice")[0] == 0
    assert run(capsys, "groups", "add-member", "analysts", "nightly-etl")[0] == 0
    args = ("endpoints", "create", "doubler", "--kind", "python", "-o", "function=sample_models:doubled",
            "-o", "returns=DOUBLE")  # fmt: skip
    assert run(capsys, *args)[0] == 0
    tokens = {}
    for name in ("alice", "bob", "nightly-etl"):
        code, out, err = run(capsys, "tokens", "create", "--for", name, "--days", "7")
        assert code == 0 and "shown this once" in err
        tokens[name] = out.strip()
    return tokens


def test_principals_groups_and_tokens(
    setup: dict[str, str], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    code, out, _ = run(capsys, "groups", "list", "--json")
    assert json.loads(out) == [
        {"name": "analysts", "admin": "", "groups": "", "members": "alice,nightly-etl"}
    ]
    code, out, _ = run(capsys, "tokens", "list", "--json")
    listed = json.loads(out)
    assert [t["principal"] for t in listed] == ["alice", "bob", "nightly-etl"]
    assert not any(secret in out for secret in setup.values())  # listings never show a secret
    monkeypatch.setenv("AIFUNCS_TOKEN", setup["nightly-etl"])
    code, out, _ = run(capsys, "whoami", "--json")
    assert json.loads(out) == {"name": "nightly-etl", "kind": "service_principal", "admin": False,
                               "implicit": False, "groups": ["analysts"]}  # fmt: skip
    code, _, err = run(capsys, "users", "create", "mallory")
    assert code == 1 and "only an admin" in err
    monkeypatch.delenv("AIFUNCS_TOKEN")
    assert run(capsys, "tokens", "revoke", str(listed[2]["id"]))[0] == 0
    monkeypatch.setattr(identity, "RECHECK_S", 0.0)  # a process rechecks its token once a second
    monkeypatch.setenv("AIFUNCS_TOKEN", setup["nightly-etl"])
    code, _, err = run(capsys, "whoami")
    assert code == 1 and "was revoked" in err and setup["nightly-etl"] not in err


def test_permissions_get_set_update(
    setup: dict[str, str], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    code, out, _ = run(capsys, "permissions", "update", "doubler", "--group", "analysts=can_query",
                       "--user", "bob=CAN_VIEW")  # fmt: skip
    assert code == 0
    assert "alice                          CAN_QUERY   groups/analysts" in out
    code, out, _ = run(capsys, "permissions", "get", "doubler", "--json")
    acl = {e["display_name"]: e["all_permissions"] for e in json.loads(out)["access_control_list"]}
    assert acl["bob"] == [{"permission_level": "CAN_VIEW", "inherited": False}]
    # bob may view but not query or manage: every manage verb is refused and changes nothing
    monkeypatch.setenv("AIFUNCS_TOKEN", setup["bob"])
    for verb in (
        ("permissions", "get", "doubler"),
        ("permissions", "update", "doubler", "--user", "bob=CAN_MANAGE"),
        ("permissions", "set", "doubler", "--user", "bob=CAN_MANAGE"),
        ("endpoints", "update", "doubler", "--description", "x"),
        ("endpoints", "delete", "doubler"),
    ):
        code, _, err = run(capsys, *verb)
        assert code == 1 and "needs CAN_MANAGE" in err, verb
    code, _, err = run(capsys, "query", "SELECT ai_query('doubler', 1.0::DOUBLE)")
    assert code == 1 and "'bob' may not query endpoint 'doubler': that needs CAN_QUERY" in err
    monkeypatch.delenv("AIFUNCS_TOKEN")
    code, out, _ = run(capsys, "permissions", "set", "doubler", "--acl",
                       '[{"user_name": "bob", "permission_level": "CAN_QUERY"}]')  # fmt: skip
    assert code == 0 and "analysts" not in out  # set replaces
    code, _, err = run(capsys, "permissions", "update", "doubler", "--user", "bob")
    assert code == 1 and "write NAME=LEVEL" in err


def test_a_token_from_the_command_line_drives_another_process(
    setup: dict[str, str], capsys: pytest.CaptureFixture[str], home: Path
) -> None:
    run(capsys, "permissions", "update", "doubler", "--user", "alice=CAN_QUERY")
    env = {**os.environ, "AIFUNCS_TOKEN": setup["alice"], "PYTHONPATH": str(Path(__file__).parents[1])}
    done = subprocess.run(
        [sys.executable, "-m", "aifuncs.cli", "query", "--format", "csv",
         "SELECT aifuncs_current_principal() AS who, ai_query('doubler', 2.0::DOUBLE) AS r"],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["who,r", "alice,4.0"]


def test_rate_limits_and_the_gateway_from_the_command_line(
    setup: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(capsys, "rate-limits", "set", "doubler", "--limit", "calls=600,key=endpoint",
                       "--limit", "tokens=5000,key=user_group,principal=analysts")  # fmt: skip
    assert code == 0
    assert "endpoint                                    600 calls/min" in out
    assert "user_group         analysts                 5,000 tokens/min" in out
    code, _, err = run(capsys, "rate-limits", "set", "doubler", "--limit", "key=user")
    assert code == 1 and "sets neither calls nor tokens" in err
    code, out, _ = run(
        capsys, "gateway", "put", "doubler", '{"guardrails": {"input": {"pii": {"behavior": "MASK"}}}}'
    )
    assert code == 0 and json.loads(out) == {
        "rate_limits": [],
        "guardrails": {"input": {"pii": {"behavior": "MASK"}}},
    }
    code, _, err = run(capsys, "gateway", "put", "doubler", "{not json")
    assert code == 1 and "not JSON" in err
