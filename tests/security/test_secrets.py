"""Secrets only admins hand out: who may create endpoints, which keys a config may name, what it may run.

Against a real `aifuncs serve` (the `secured` fixture: admin, alice CAN_QUERY on `llm`, bob CAN_VIEW, mallory
nothing) with a secret in the server's environment; the upstream records every body and auth header, so each
refusal is also checked to have sent nothing.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from pg import stored_database

import aifuncs
import aifuncs.governance as gov
from aifuncs.errors import PermissionDenied
from aifuncs.governance.egress import EgressPolicy

from .conftest import Secured, Serve

pytestmark = pytest.mark.usefixtures("backend")  # each test on SQLite and on PostgreSQL

SERVER_SECRET = "server-only-7b1f9e"  # in the server's environment, named by nobody's grant
STORED_SECRET = "sk-stored-4c2a81"  # put into a scope over the Secrets API


@pytest.fixture
def keyed(secured: Secured, serve: Serve, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A second server of the same home, with an encryption key and a secret in its environment."""
    key = gov.generate_key()
    monkeypatch.setenv("AIFUNCS_ENCRYPTION_KEY", key)  # this process seals and opens with the same key
    with serve(extra_env={"AIFUNCS_ENCRYPTION_KEY": key, "SERVER_SECRET": SERVER_SECRET}) as url:
        yield url


def call(url: str, secured: Secured, who: str, method: str, path: str, **kwargs: Any) -> httpx.Response:
    return httpx.request(method, url + path, headers=secured.headers(who), timeout=60, **kwargs)


def external(name: str, base: str, key: str) -> dict[str, Any]:
    return {"name": name, "config": {"served_entities": [{"external_model": {
        "name": "m", "provider": "custom", "task": "llm/v1/chat",
        "custom_provider_config": {"custom_provider_url": base, "openai_api_key": key}}}]}}  # fmt: skip


def test_creating_an_endpoint_needs_the_entitlement(secured: Secured) -> None:
    body = {"name": "mine", "config": {"served_entities": [{"entity_name": "wine", "entity_version": "1"}]}}
    for who in ("mallory", "alice", "bob"):
        refused = secured.call(who, "POST", "/api/2.0/serving-endpoints", json=body)
        assert refused.status_code == 403, (who, refused.text)
        assert "allow-endpoint-create" in refused.json()["message"]
    assert [e.name for e in aifuncs.endpoints.list()] == ["llm"]
    with pytest.raises(PermissionDenied):  # only admins grant it
        gov.Directory(secured.home / "catalog.db", gov.PrincipalStore(secured.home / "catalog.db").get("alice")
                      ).grant_entitlement("alice", gov.CREATE_ENDPOINTS)  # fmt: skip
    gov.create_group("builders", members=["alice"])
    gov.grant_entitlement("builders")  # through a group
    made = secured.call("alice", "POST", "/api/2.0/serving-endpoints", json=body)
    assert made.status_code == 200, made.text
    assert made.json()["permission_level"] == "CAN_MANAGE"
    assert (
        secured.call("mallory", "POST", "/api/2.0/serving-endpoints", json={**body, "name": "m2"}).status_code
        == 403
    )
    assert ("entitlements.grant", "builders") in [(e.action, e.target) for e in gov.audit_log()]
    gov.revoke_entitlement("builders")
    again = secured.call("alice", "POST", "/api/2.0/serving-endpoints", json={**body, "name": "mine2"})
    assert again.status_code == 403


def test_an_entitled_user_cannot_name_server_variables_unreadable_scopes_or_internal_hosts(
    secured: Secured, keyed: str
) -> None:
    gov.grant_entitlement("alice")
    admin = "admin"
    assert (
        call(
            keyed, secured, admin, "POST", "/api/2.0/secrets/scopes/create", json={"scope": "ops"}
        ).status_code
        == 200
    )
    put = {"scope": "ops", "key": "openai", "string_value": STORED_SECRET}
    assert call(keyed, secured, admin, "POST", "/api/2.0/secrets/put", json=put).status_code == 200
    upstream = secured.upstream.url + "/v1"
    cases = {
        "{{env/AIFUNCS_ENCRYPTION_KEY}}": "AIFUNCS_ENCRYPTION_KEY",
        "{{env/SERVER_SECRET}}": "only an admin",
        "{{env/ANY}}": "only an admin",
        "{{secrets/ops/openai}}": "needs READ",  # the scope exists; alice holds nothing on it
        "{{secrets/nope/openai}}": "no secret scope 'nope'",
    }
    for reference, said in cases.items():
        refused = call(keyed, secured, "alice", "POST", "/api/2.0/serving-endpoints",
                       json=external("leak", upstream, reference))  # fmt: skip
        assert refused.status_code in (400, 403), (reference, refused.text)
        assert said in refused.json()["message"], (reference, refused.text)
    env_field = external("leak", upstream, "{{env/X}}")
    config = env_field["config"]["served_entities"][0]["external_model"]["custom_provider_config"]
    config.pop("openai_api_key")
    config["openai_api_key_env"] = "SERVER_SECRET"
    assert (
        call(keyed, secured, "alice", "POST", "/api/2.0/serving-endpoints", json=env_field).status_code == 403
    )
    # with READ on the scope, the key is hers to use, but not towards an internal host
    assert call(keyed, secured, admin, "POST", "/api/2.0/secrets/acls/put",
                json={"scope": "ops", "principal": "alice", "permission": "READ"}).status_code == 200  # fmt: skip
    for base in (upstream, "http://169.254.169.254/v1", "http://10.0.0.7/v1", "http://[::1]:80/v1"):
        refused = call(keyed, secured, "alice", "POST", "/api/2.0/serving-endpoints",
                       json=external("leak", base, "{{secrets/ops/openai}}"))  # fmt: skip
        assert refused.status_code == 403, (base, refused.text)
        assert (
            "egress allow-list" in refused.json()["message"]
            and "aifuncs egress allow" in refused.json()["message"]
        )
    assert [e.name for e in aifuncs.endpoints.list()] == ["llm"]
    assert secured.upstream.stats.requests == 0
    assert not secured.upstream_saw(SERVER_SECRET) and not secured.upstream_saw(STORED_SECRET)


def test_can_manage_cannot_swap_a_config_to_a_server_secret_or_host(
    secured: Secured, keyed: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    aifuncs.endpoints.update_permissions("llm", [{"user_name": "alice", "permission_level": "CAN_MANAGE"}])
    before = aifuncs.endpoints.get("llm").version
    upstream = secured.upstream.url + "/v1"
    for reference in ("{{env/AIFUNCS_ENCRYPTION_KEY}}", "{{env/SERVER_SECRET}}", "{{secrets/nope/k}}"):
        config = external("llm", upstream, reference)["config"]
        refused = call(keyed, secured, "alice", "PUT", "/api/2.0/serving-endpoints/llm/config", json=config)
        assert refused.status_code in (400, 403), (reference, refused.text)
    moved = external("llm", "http://169.254.169.254/v1", "{{env/X}}")["config"]
    moved["served_entities"][0]["external_model"]["custom_provider_config"].pop("openai_api_key")
    refused = call(keyed, secured, "alice", "PUT", "/api/2.0/serving-endpoints/llm/config", json=moved)
    assert refused.status_code == 403 and "169.254.169.254" in refused.json()["message"]
    assert aifuncs.endpoints.get("llm").version == before
    # the same holds for a stored user acting through AIFUNCS_TOKEN in Python
    monkeypatch.setenv("AIFUNCS_TOKEN", secured.tokens["alice"])
    with pytest.raises(PermissionDenied, match="only an admin"):
        aifuncs.endpoints.update("llm", api_key_env="SERVER_SECRET")
    with pytest.raises(PermissionDenied, match="egress allow-list"):
        aifuncs.endpoints.update("llm", base_url="http://127.0.0.1:9/v1")
    monkeypatch.delenv("AIFUNCS_TOKEN")
    assert aifuncs.endpoints.get("llm").version == before
    assert secured.upstream.stats.requests == 0
    with pytest.raises(PermissionDenied, match="aifuncs' own settings"):  # nobody, admins included
        aifuncs.endpoints.update("llm", api_key_env="AIFUNCS_ENCRYPTION_KEY")


def test_a_secret_reference_works_end_to_end_and_is_never_shown(
    secured: Secured, keyed: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from databricks.sdk import WorkspaceClient
    from databricks.sdk.errors import PermissionDenied as SdkDenied
    from databricks.sdk.service.workspace import AclPermission

    admin = WorkspaceClient(host=keyed, token=secured.tokens["admin"])
    admin.secrets.create_scope(scope="llm-keys")
    admin.secrets.put_secret(scope="llm-keys", key="openai", string_value=STORED_SECRET)
    keys = list(admin.secrets.list_secrets(scope="llm-keys"))
    assert [k.key for k in keys] == ["openai"] and STORED_SECRET not in str(keys)
    assert {s.name for s in admin.secrets.list_scopes()} == {"llm-keys"}
    admin.secrets.put_acl(scope="llm-keys", principal="alice", permission=AclPermission.READ)
    acls = {a.principal: a.permission for a in admin.secrets.list_acls(scope="llm-keys")}
    assert acls == {"admin": AclPermission.MANAGE, "alice": AclPermission.READ}
    assert (
        base64.b64decode(admin.secrets.get_secret(scope="llm-keys", key="openai").value or "")
        == STORED_SECRET.encode()
    )
    mallory = WorkspaceClient(host=keyed, token=secured.tokens["mallory"])
    with pytest.raises(SdkDenied):
        mallory.secrets.get_secret(scope="llm-keys", key="openai")
    with pytest.raises(SdkDenied):
        mallory.secrets.put_acl(scope="llm-keys", principal="mallory", permission=AclPermission.MANAGE)

    gov.grant_entitlement("alice")
    EgressPolicy(secured.home / "catalog.db").allow("127.0.0.1", gov.whoami())  # the upstream's address
    made = call(keyed, secured, "alice", "POST", "/api/2.0/serving-endpoints",
                json=external("mine", secured.upstream.url + "/v1", "{{secrets/llm-keys/openai}}"))  # fmt: skip
    assert made.status_code == 200, made.text
    answer = call(keyed, secured, "alice", "POST", "/serving-endpoints/mine/invocations",
                  json={"messages": [{"role": "user", "content": "hi"}]})  # fmt: skip
    assert answer.status_code == 200, answer.text
    assert f"Bearer {STORED_SECRET}" in secured.upstream.stats.auth
    shown = call(keyed, secured, "alice", "GET", "/api/2.0/serving-endpoints/mine")
    model = shown.json()["config"]["served_entities"][0]["external_model"]
    assert model["openai_config"]["openai_api_key"] == "{{secrets/llm-keys/openai}}"
    assert STORED_SECRET not in shown.text and STORED_SECRET not in made.text
    # never at rest in clear, never in the audit log or the server's logs
    for path in [*secured.home.rglob("*"), *secured.logs.glob("*.log")]:
        if path.is_file():
            assert STORED_SECRET.encode() not in path.read_bytes(), path
    assert STORED_SECRET.encode() not in stored_database()


def test_non_admins_may_not_run_code_or_read_files_in_process(
    secured: Secured, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    gov.grant_entitlement("alice")
    monkeypatch.setenv("AIFUNCS_TOKEN", secured.tokens["alice"])
    refused = {
        "python": {"function": "os:system"},
        "mlflow": {"model_uri": str(tmp_path)},
        "llama_cpp": {"model_path": str(tmp_path / "x.gguf")},
        "sentence_transformers": {"model": str(tmp_path)},
    }
    for kind, options in refused.items():
        with pytest.raises(PermissionDenied, match="only an admin"):
            aifuncs.endpoints.create(f"x-{kind}", kind=kind, **options)
    with pytest.raises(PermissionDenied, match="tracking_uri"):
        aifuncs.endpoints.create(
            "x-store", kind="mlflow", model_uri="models:/m/1", tracking_uri="sqlite:////etc/x.db"
        )
    aifuncs.endpoints.create("registered", kind="mlflow", model_uri="models:/m/1")  # a registry model is fine
    monkeypatch.delenv("AIFUNCS_TOKEN")
    assert sorted(e.name for e in aifuncs.endpoints.list()) == ["llm", "registered"]


def test_a_guardrail_topic_endpoint_needs_can_query(secured: Secured) -> None:
    aifuncs.endpoints.create("hidden-emb", kind="openai", model="e", task="embeddings",
                             base_url=secured.upstream.url + "/v1")  # fmt: skip
    aifuncs.endpoints.update_permissions("llm", [{"user_name": "alice", "permission_level": "CAN_MANAGE"}])
    rails = {"guardrails": {"input": {"valid_topics": ["billing"], "topic_endpoint": "hidden-emb"}}}
    refused = secured.call("alice", "PUT", "/api/2.0/serving-endpoints/llm/ai-gateway", json=rails)
    assert refused.status_code == 400 and "does not exist" in refused.json()["message"]
    aifuncs.endpoints.update_permissions(
        "hidden-emb", [{"user_name": "alice", "permission_level": "CAN_VIEW"}]
    )
    refused = secured.call("alice", "PUT", "/api/2.0/serving-endpoints/llm/ai-gateway", json=rails)
    assert refused.status_code == 403 and "CAN_QUERY" in refused.json()["message"]
    aifuncs.endpoints.update_permissions(
        "hidden-emb", [{"user_name": "alice", "permission_level": "CAN_QUERY"}]
    )
    assert (
        secured.call("alice", "PUT", "/api/2.0/serving-endpoints/llm/ai-gateway", json=rails).status_code
        == 200
    )
