"""The egress allow-list: where endpoints configured by non-admins may send requests, checked when a config is
saved and again before each request (names resolved then), kept by admins through `aifuncs egress`."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from pg import stored_database

import aifuncs
import aifuncs.governance as gov
from aifuncs.cli import main
from aifuncs.errors import ConfigError, PermissionDenied
from aifuncs.governance.egress import EgressPolicy, EgressRefused, parse_entry

from .conftest import Secured

pytestmark = pytest.mark.usefixtures("backend")  # each test on SQLite and on PostgreSQL


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_entries_and_the_addresses_refused_unless_listed(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AIFUNCS_TOKEN", raising=False)
    assert str(parse_entry("API.example.com:8443")) == "api.example.com:8443"
    assert str(parse_entry("10.1.2.3/8")) == "10.0.0.0/8" and str(parse_entry("[::1]:80")) == "[::1]:80"
    with pytest.raises(ConfigError, match="port"):
        parse_entry("example.com:99999")
    policy = EgressPolicy(home / "catalog.db")
    owner = gov.whoami()
    gov.create_user("alice")
    with pytest.raises(PermissionDenied, match="only an admin"):
        policy.allow("example.com", gov.PrincipalStore(home / "catalog.db").get("alice"))
    with pytest.raises(EgressRefused, match="not on this server's egress allow-list"):
        policy.check("http://127.0.0.1:8080/v1")
    policy.allow("localhost:8080", owner)
    policy.allow("169.254.169.254", owner)
    # a listed name that resolves to loopback is still refused: the address must be listed too
    with pytest.raises(EgressRefused, match=r"resolves to 127\.0\.0\.1.*aifuncs egress allow 127\.0\.0\.1"):
        policy.check("http://localhost:8080/v1")
    with pytest.raises(EgressRefused, match="port 9090"):
        policy.check("http://localhost:9090/v1")  # the port is part of the entry
    policy.check("http://169.254.169.254/latest")  # an address listed on purpose
    policy.allow("127.0.0.0/8", owner)
    policy.check("http://localhost:8080/v1")
    for refused in ("http://10.0.0.7/", "http://[fe80::1]/", "http://[::1]/", "http://192.168.1.1/"):
        with pytest.raises(EgressRefused):
            policy.check(refused)
    actions = [(e.action, e.target) for e in gov.audit_log()]
    assert ("egress.allow", "localhost:8080") in actions and ("egress.allow", "127.0.0.0/8") in actions


def test_each_request_is_checked_again(
    secured: Secured, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    port = secured.upstream.url.rsplit(":", 1)[1]
    assert run(capsys, "egress", "allow", f"localhost:{port}")[0] == 0
    assert run(capsys, "egress", "allow", "127.0.0.1")[0] == 0
    assert run(capsys, "users", "entitle", "alice")[0] == 0
    code, out, _ = run(capsys, "users", "entitlements", "alice")
    assert code == 0 and out.strip() == "allow-endpoint-create"
    monkeypatch.setenv("AIFUNCS_TOKEN", secured.tokens["alice"])
    code, _, err = run(capsys, "egress", "allow", "example.com")
    assert code != 0 and "only an admin" in err
    aifuncs.endpoints.create("near", kind="openai", model="m", base_url=f"http://localhost:{port}/v1")
    assert aifuncs.endpoints.get("near").options["egress_checked"] is True  # recorded: a non-admin saved it
    monkeypatch.delenv("AIFUNCS_TOKEN")
    message = {"messages": [{"role": "user", "content": "hi"}]}
    assert (
        secured.call("alice", "POST", "/serving-endpoints/near/invocations", json=message).status_code == 200
    )
    assert secured.upstream.stats.requests == 1
    # the name now reaches an address no longer listed: the next request is refused before it is sent
    assert run(capsys, "egress", "disallow", "127.0.0.1")[0] == 0
    refused = secured.call("alice", "POST", "/serving-endpoints/near/invocations", json=message)
    assert refused.status_code in (400, 403) and "egress allow-list" in refused.json()["message"], (
        refused.text
    )
    assert secured.upstream.stats.requests == 1
    # an admin's save lifts the restriction (the config's author is who counts)
    aifuncs.endpoints.update("near", description="checked by an admin")
    assert aifuncs.endpoints.get("near").options["egress_checked"] is False  # an admin's, recorded
    deadline = time.monotonic() + 30  # the server binds a request anew within a second of a change
    while (
        lifted := secured.call("alice", "POST", "/serving-endpoints/near/invocations", json=message)
    ).status_code != 200:
        assert time.monotonic() < deadline, lifted.text
        time.sleep(0.1)
    assert secured.upstream.stats.requests == 2


def test_the_secrets_command_line(
    home: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    monkeypatch.delenv("AIFUNCS_TOKEN", raising=False)
    monkeypatch.delenv("AIFUNCS_ENCRYPTION_KEY", raising=False)
    gov.create_user("alice")
    assert run(capsys, "secrets", "create-scope", "team")[0] == 0
    value = tmp_path / "key.txt"
    value.write_text("sk-cli-91ab")
    code, _, err = run(capsys, "secrets", "put", "team", "openai", "--value-file", str(value))
    assert code != 0 and "set AIFUNCS_ENCRYPTION_KEY" in err  # never stored in clear
    monkeypatch.setenv("AIFUNCS_ENCRYPTION_KEY", gov.generate_key())
    code, out, _ = run(capsys, "secrets", "put", "team", "openai", "--value-file", str(value))
    assert code == 0 and "{{secrets/team/openai}}" in out
    code, out, _ = run(capsys, "secrets", "list", "team", "--json")
    assert code == 0 and "sk-cli-91ab" not in out and '"key": "openai"' in out
    assert run(capsys, "secrets", "put-acl", "team", "alice", "read")[0] == 0
    assert "alice  READ" in run(capsys, "secrets", "list-acls", "team")[1]
    assert run(capsys, "secrets", "get", "team", "openai")[1].strip() == "sk-cli-91ab"
    assert run(capsys, "secrets", "create-scope", "envs", "--backend", "ENVIRONMENT")[0] == 0
    code, _, err = run(capsys, "secrets", "put", "envs", "k", "--env", "AIFUNCS_ENCRYPTION_KEY")
    assert code != 0 and "aifuncs' own settings" in err
    for path in home.rglob("*"):
        if path.is_file():
            assert b"sk-cli-91ab" not in path.read_bytes(), path
    assert b"sk-cli-91ab" not in stored_database()
