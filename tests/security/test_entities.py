"""Served entities and fallbacks attacked by token holders, against a real `aifuncs serve`: a config of several
entities reaches only what its author may (checked for every entity, over REST and Python), a fallback reaches
only endpoints the caller may query and keeps their guardrails, limits and inference tables, one entity's own
route keeps the endpoint's, hostile names and shares are a 400, and a server killed mid-fallback leaves every
sent request in the usage log."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from servers import FakeServer, Faults, free_port

import aifuncs
import aifuncs.governance as gov
from aifuncs import ServedEntity
from aifuncs.catalog import default_catalog
from aifuncs.errors import AifuncsError, InvalidEndpointName, PermissionDenied
from aifuncs.governance.egress import EgressPolicy
from aifuncs.governance.keys import keyring
from aifuncs.governance.secrets import Secrets

from .conftest import Secured

INVOKE = "/serving-endpoints/{}/invocations"
CONFIG = "/api/2.0/serving-endpoints/{}/config"
GATEWAY = "/api/2.0/serving-endpoints/{}/ai-gateway"
DEAD = Faults(server_error=1.0)  # every request answers HTTP 500
QUICK = {"max_retries": 0, "timeout_s": 20}  # a failure is final at once: the fallback follows


def chat(text: str = "hi", **extra: Any) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": text}], **extra}


def entity(name: str, url: str, share: int, **options: Any) -> ServedEntity:
    return ServedEntity(name, "openai", {"model": "m", "base_url": url + "/v1", **options}, share)


def external(name: str, base: str, key: str | None = None) -> dict[str, Any]:
    config: dict[str, Any] = {"openai_api_base": base}
    if key is not None:
        config["openai_api_key"] = key
    return {
        "name": name,
        "external_model": {"name": "m", "provider": "openai", "task": "llm/v1/chat", "openai_config": config},
    }


def rest_config(entities: list[dict[str, Any]], shares: list[Any] | None = None) -> dict[str, Any]:
    shares = shares if shares is not None else [100] + [0] * (len(entities) - 1)
    routes = [
        {"served_entity_name": e["name"], "traffic_percentage": s}
        for e, s in zip(entities, shares, strict=True)
    ]
    return {"served_entities": entities, "traffic_config": {"routes": routes}}


def until(condition: Callable[[], Any], what: str, timeout_s: float = 30) -> Any:
    """Wait for `condition` to be truthy (the server binds a changed endpoint anew within a second)."""
    deadline = time.monotonic() + timeout_s
    while not (found := condition()):
        assert time.monotonic() < deadline, what
        time.sleep(0.1)
    return found


def usage(sql: str) -> list[tuple[Any, ...]]:
    return aifuncs.connect().sql(sql).fetchall()


def version(name: str) -> int:
    return aifuncs.endpoints.get(name).version


# -- what a config of several entities may reach: its author's rights, for every entity ------------------------


def test_every_entity_of_a_config_is_held_to_its_authors_rights(
    secured: Secured, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A CAN_MANAGE non-admin (and an entitled one creating) cannot hide, in any entity from the 1st to the 10th,
    a secret it may not read, a server variable, a host off the allow-list or an in-process model: over REST
    (create and update config) and Python (create and update); nothing is stored and nothing is sent."""
    port = secured.upstream.url.rsplit(":", 1)[1]
    owner = gov.whoami()
    EgressPolicy(secured.home / "catalog.db").allow(f"127.0.0.1:{port}", owner)  # the upstream: allowed
    vault = Secrets(secured.home / "catalog.db", owner, keyring())
    vault.create_scope("locked", backend_type="ENVIRONMENT")
    vault.put("locked", "k", environment_variable="HOME")  # exists; alice holds no READ on it
    aifuncs.endpoints.update_permissions("llm", [{"user_name": "alice", "permission_level": "CAN_MANAGE"}])
    gov.grant_entitlement("alice")
    base = secured.upstream.url + "/v1"
    over_rest = {
        "an unreadable secret": external("bad", base, "{{secrets/locked/k}}"),
        "a server variable": external("bad", base, "{{env/HOME}}"),
        "an aifuncs variable": external("bad", base, "{{env/AIFUNCS_ENCRYPTION_KEY}}"),
        "an internal host": external("bad", "http://10.0.0.7/v1"),
        "loopback on another port": external("bad", f"http://127.0.0.1:{free_port()}/v1"),
        "a metadata address": external("bad", "http://169.254.169.254/v1"),
    }
    for what, hostile in over_rest.items():
        for position in (1, 4, 9):  # the 2nd, 5th and 10th entity
            entities = [external(f"ok{i}", base) for i in range(9)]
            entities.insert(position, hostile)
            for method, path, body in (
                ("PUT", CONFIG.format("llm"), rest_config(entities)),
                ("POST", "/api/2.0/serving-endpoints", {"name": "made", "config": rest_config(entities)}),
            ):
                refused = secured.call("alice", method, path, json=body)
                assert refused.status_code in (400, 403), (what, position, method, refused.text)
    assert version("llm") == 1 and [e.name for e in aifuncs.endpoints.list()] == ["llm"]

    monkeypatch.setenv("AIFUNCS_TOKEN", secured.tokens["alice"])
    url = secured.upstream.url
    in_python = {
        "an unreadable secret": entity("bad", url, 0, api_key_secret="locked/k"),
        "a server variable": entity("bad", url, 0, api_key_env="HOME"),
        "an internal host": ServedEntity(
            "bad", "openai", {"model": "m", "base_url": "http://10.0.0.7/v1"}, 0
        ),
        "a llama_cpp model_path": ServedEntity("bad", "llama_cpp", {"model_path": "/etc/passwd"}, 0),
        "a python function": ServedEntity("bad", "python", {"function": "os:system"}, 0),
        "an mlflow path": ServedEntity("bad", "mlflow", {"model_uri": "/etc"}, 0),
        "an egress flag of its own": entity("bad", "http://10.0.0.7", 0, egress_checked=False),
    }
    for hostile in in_python.values():
        entities = [entity(f"ok{i}", url, 100 if i == 0 else 0) for i in range(9)]
        entities.insert(5, hostile)
        with pytest.raises(AifuncsError):
            aifuncs.endpoints.update("llm", served_entities=entities)
        with pytest.raises(AifuncsError):
            aifuncs.endpoints.create("made", served_entities=entities)
    # an mlflow endpoint: a registered model first, a file path later
    tabular = [ServedEntity("reg", "mlflow", {"model_uri": "models:/m/1"}, 100)]
    with pytest.raises(AifuncsError, match="only an admin"):
        aifuncs.endpoints.create(
            "tab", served_entities=[*tabular, ServedEntity("p", "mlflow", {"model_uri": "/tmp"}, 0)]
        )
    monkeypatch.delenv("AIFUNCS_TOKEN")
    assert version("llm") == 1 and [e.name for e in aifuncs.endpoints.list()] == ["llm"]
    assert secured.upstream.stats.requests == 0


def test_each_entity_is_checked_against_the_allow_list_at_request_time(
    secured: Secured, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An entitled user's endpoint of two entities on allowed hosts: once the address is taken off the list,
    neither entity (nor a fallback between them) sends anything."""
    port = secured.upstream.url.rsplit(":", 1)[1]
    policy = EgressPolicy(secured.home / "catalog.db")
    policy.allow(f"localhost:{port}", gov.whoami())
    policy.allow("127.0.0.1", gov.whoami())
    gov.grant_entitlement("alice")
    near = f"http://localhost:{port}"
    monkeypatch.setenv("AIFUNCS_TOKEN", secured.tokens["alice"])
    aifuncs.endpoints.create(
        "pair", served_entities=[entity("a", near, 50, **QUICK), entity("b", near, 50, **QUICK)]
    )
    aifuncs.endpoints.put_ai_gateway("pair", {"fallback_config": {"enabled": True}})
    monkeypatch.delenv("AIFUNCS_TOKEN")
    assert all(e.options["egress_checked"] is True for e in aifuncs.endpoints.get("pair").entities)
    assert secured.call("alice", "POST", INVOKE.format("pair"), json=chat()).status_code == 200
    sent = secured.upstream.stats.requests
    policy.disallow("127.0.0.1", gov.whoami())
    for _ in range(6):
        refused = secured.call("alice", "POST", INVOKE.format("pair"), json=chat())
        assert refused.status_code in (400, 403) and "egress allow-list" in refused.json()["message"], (
            refused.text
        )
    assert secured.upstream.stats.requests == sent


# -- fallbacks: only what the author and the caller may query, under the fallback's own governance -------------


def test_a_fallback_reaches_only_endpoints_its_author_and_its_caller_may_query(
    secured: Secured, monkeypatch: pytest.MonkeyPatch
) -> None:
    with FakeServer(faults=DEAD) as dead, FakeServer(keep_bodies=True) as backup:
        aifuncs.endpoints.update("llm", base_url=dead.url + "/v1", max_retries=0)
        aifuncs.endpoints.create("backup", kind="openai", model="b", base_url=backup.url + "/v1")
        aifuncs.endpoints.update_permissions("llm", [{"user_name": "bob", "permission_level": "CAN_MANAGE"}])
        # bob manages llm but may not query backup: he may not name it (nor may he see that it exists)
        hidden = secured.call("bob", "PUT", GATEWAY.format("llm"),
                              json={"fallback_config": {"enabled": True, "endpoint": "backup"}})  # fmt: skip
        assert hidden.status_code == 400 and "does not exist" in hidden.json()["message"], hidden.text
        aifuncs.endpoints.update_permissions("backup", [{"user_name": "bob", "permission_level": "CAN_VIEW"}])
        viewed = secured.call("bob", "PUT", GATEWAY.format("llm"),
                              json={"fallback_config": {"enabled": True, "endpoint": "backup"}})  # fmt: skip
        assert viewed.status_code == 403 and "CAN_QUERY" in viewed.json()["message"], viewed.text
        # an admin names it: alice (CAN_QUERY on llm only) still gets no answer from backup
        aifuncs.endpoints.put_ai_gateway("llm", {"fallback_config": {"enabled": True, "endpoint": "backup"}})
        for _ in range(3):
            failed = secured.call("alice", "POST", INVOKE.format("llm"), json=chat("for llm only"))
            assert failed.status_code != 200, failed.text
        assert backup.stats.requests == 0
        aifuncs.endpoints.update_permissions(
            "backup", [{"user_name": "alice", "permission_level": "CAN_QUERY"}]
        )
        answered = until(
            lambda: (
                (r := secured.call("alice", "POST", INVOKE.format("llm"), json=chat("now"))).status_code
                == 200
                and r
            ),
            "the fallback answers once alice may query it",
        )
        assert answered.headers["served-model-name"] == "backup" or answered.json()


def test_fallback_cycles_made_in_turn_by_two_authors_are_refused(secured: Secured) -> None:
    url = secured.upstream.url
    for name in ("a", "b", "c"):
        aifuncs.endpoints.create(name, kind="openai", model=name, base_url=url + "/v1")
    grants = [{"user_name": who, "permission_level": "CAN_MANAGE"} for who in ("alice", "bob")]
    for name in ("a", "b", "c"):
        aifuncs.endpoints.update_permissions(name, grants)
    to = lambda target: {"fallback_config": {"enabled": True, "endpoint": target}}  # noqa: E731
    assert secured.call("alice", "PUT", GATEWAY.format("a"), json=to("b")).status_code == 200
    assert secured.call("bob", "PUT", GATEWAY.format("b"), json=to("c")).status_code == 200
    for who, name, target in (("alice", "c", "a"), ("bob", "c", "b"), ("bob", "b", "b"), ("alice", "b", "a")):
        refused = secured.call(who, "PUT", GATEWAY.format(name), json=to(target))
        assert refused.status_code == 400 and "cycle" in refused.json()["message"], (
            name,
            target,
            refused.text,
        )
    assert aifuncs.endpoints.get_ai_gateway("c").get("fallback_config") is None


def test_a_fallback_endpoint_keeps_its_guardrails_limits_and_inference_table_for_the_caller(
    secured: Secured,
) -> None:
    with FakeServer(faults=DEAD) as dead, FakeServer(keep_bodies=True) as backup:
        aifuncs.endpoints.update("llm", base_url=dead.url + "/v1", max_retries=0)
        aifuncs.endpoints.create("backup", kind="openai", model="b", base_url=backup.url + "/v1")
        aifuncs.endpoints.update_permissions(
            "backup", [{"user_name": "alice", "permission_level": "CAN_QUERY"}]
        )
        aifuncs.endpoints.put_ai_gateway("backup", {
            "guardrails": {"input": {"invalid_keywords": ["Project Falcon"]}, "output": {"pii": {"behavior": "MASK"}}},
            "rate_limits": [{"calls": 3, "key": "user", "renewal_period": "minute"}],
            "inference_table_config": {"enabled": True},
        })  # fmt: skip
        aifuncs.endpoints.put_ai_gateway("llm", {"fallback_config": {"enabled": True, "endpoint": "backup"}})
        first = until(
            lambda: (
                (
                    r := secured.call(
                        "alice", "POST", INVOKE.format("llm"), json=chat("card 4111 1111 1111 1111")
                    )
                ).status_code
                == 200
                and r
            ),
            "the fallback answers",
        )
        assert "4111" not in first.text, first.text  # backup's output guardrail masked the answer
        blocked = secured.call("alice", "POST", INVOKE.format("llm"), json=chat("about project falcon"))
        assert blocked.status_code == 400, blocked.text  # backup's input guardrail
        assert not any("falcon" in json.dumps(b).lower() for b in backup.stats.bodies)
        statuses = [
            secured.call("alice", "POST", INVOKE.format("llm"), json=chat(f"q{i}")).status_code
            for i in range(4)
        ]
        assert statuses.count(429) >= 2 and backup.stats.requests <= 3, statuses  # backup's limit: 3 a minute
    rows = until(
        lambda: usage("SELECT endpoint, requester, status, served_entity, usage_context FROM aifuncs_usage"
                      " WHERE endpoint = 'backup' AND status = 'ok'"),
        "backup's usage rows",
    )  # fmt: skip
    assert {r[1] for r in rows} == {"alice"} and all("fallback_from" in (r[4] or "") for r in rows), rows
    payloads = until(
        lambda: usage("SELECT requester, served_entity_id FROM aifuncs_payloads"), "inference rows"
    )
    assert {p[0] for p in payloads} == {"alice"}, payloads


def test_one_entitys_own_route_keeps_the_endpoints_guardrails_limits_and_inference_table(
    secured: Secured,
) -> None:
    url = secured.upstream.url
    with FakeServer() as backup:
        aifuncs.endpoints.update("llm", served_entities=[entity("main", url, 100), entity("spare", url, 0)])
        aifuncs.endpoints.create("backup", kind="openai", model="b", base_url=backup.url + "/v1")
        aifuncs.endpoints.update_permissions(
            "backup", [{"user_name": "alice", "permission_level": "CAN_QUERY"}]
        )
        aifuncs.endpoints.put_ai_gateway("llm", {
            "guardrails": {"input": {"invalid_keywords": ["Project Falcon"]}},
            "rate_limits": [{"calls": 4, "key": "user", "renewal_period": "minute"}],
            "inference_table_config": {"enabled": True},
            "fallback_config": {"enabled": True, "endpoint": "backup"},
        })  # fmt: skip
        spare = INVOKE.format("llm").replace("/invocations", "/served-models/spare/invocations")
        answered = until(
            lambda: (r := secured.call("alice", "POST", spare, json=chat("hello"))).status_code != 404 and r,
            "the entity route",
        )
        assert answered.status_code == 200 and answered.headers["served-model-name"] == "spare", answered.text
        blocked = secured.call("alice", "POST", spare, json=chat("about project falcon"))
        assert blocked.status_code == 400, blocked.text
        assert not secured.upstream_saw("falcon")
        statuses = [secured.call("alice", "POST", spare, json=chat(f"q{i}")).status_code for i in range(5)]
        assert statuses.count(429) >= 2, statuses
        for who in ("bob", "mallory"):
            assert secured.call(who, "POST", spare, json=chat()).status_code in (403, 404)
    rows = until(lambda: usage("SELECT requester, served_entity_id FROM aifuncs_payloads"), "inference rows")
    assert ("alice", "spare") in rows, rows


# -- hostile names and shares: a 400 naming the problem, never a 500 or a broken header -------------------------


def test_hostile_entity_names_routes_and_shares_are_refused_whole(secured: Secured) -> None:
    base = secured.upstream.url + "/v1"
    port = secured.upstream.url.rsplit(":", 1)[1]
    EgressPolicy(secured.home / "catalog.db").allow(f"127.0.0.1:{port}", gov.whoami())
    aifuncs.endpoints.update_permissions("llm", [{"user_name": "alice", "permission_level": "CAN_MANAGE"}])
    bad_names = ["prod\n", "prod\r\nX-Evil: 1", "a" * 129, "pröd", "a/../b", "a b", ".hidden", "", "ünï"]
    for name in bad_names:
        body = rest_config([external(name, base), external("other", base)])
        refused = secured.call("alice", "PUT", CONFIG.format("llm"), json=body)
        assert refused.status_code == 400, (name, refused.text)
        assert "name" in refused.json()["message"], refused.text
    for share in (True, 50.5, "50", None, -10, 101, [50], {"x": 1}):
        body = rest_config([external("a", base), external("b", base)], [share, 50])
        refused = secured.call("alice", "PUT", CONFIG.format("llm"), json=body)
        assert refused.status_code == 400, (share, refused.text)
    for routes in (
        [{"served_entity_name": "nope", "traffic_percentage": 100}],
        [{"served_entity_name": ["a"], "traffic_percentage": 100}],
        [{"served_entity_name": {"a": 1}, "traffic_percentage": 100}],
        [
            {"served_entity_name": "a", "traffic_percentage": 50},
            {"served_entity_name": "a", "traffic_percentage": 50},
        ],
        "a",
        [None],
    ):
        body = {
            "served_entities": [external("a", base), external("b", base)],
            "traffic_config": {"routes": routes},
        }
        refused = secured.call("alice", "PUT", CONFIG.format("llm"), json=body)
        assert refused.status_code == 400, (routes, refused.text)
    for entities in ([None], ["x"], [{"name": "a"}], [{"name": "a", "external_model": "x"}], {"a": 1}):
        body = {"served_entities": entities, "traffic_config": {"routes": []}}
        refused = secured.call("alice", "PUT", CONFIG.format("llm"), json=body)
        assert refused.status_code == 400, (entities, refused.text)
    assert version("llm") == 1
    # an entity route naming something hostile: a 404 naming what the endpoint serves
    for entity_path in ("nope", "%E2%80%AE", "a" * 300, "..%2F..%2Fconfig", "%0d%0aX-Evil:%201"):
        missing = secured.call("alice", "POST", f"/serving-endpoints/llm/served-models/{entity_path}/invocations",
                               json=chat())  # fmt: skip
        assert missing.status_code == 404 and "X-Evil" not in str(missing.headers), (
            entity_path,
            missing.text,
        )
    assert secured.call("alice", "POST", INVOKE.format("llm"), json=chat()).status_code == 200


def test_a_fallback_named_before_its_target_was_deleted_does_not_follow_a_new_endpoint_of_that_name(
    secured: Secured, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The admin names `backup` as llm's fallback; `backup` is deleted and mallory makes her own under the name,
    open to everyone: alice's text must not reach mallory's upstream when llm fails."""
    with FakeServer(faults=DEAD) as dead, FakeServer() as backup, FakeServer(keep_bodies=True) as trap:
        aifuncs.endpoints.update("llm", base_url=dead.url + "/v1", max_retries=0)
        aifuncs.endpoints.create("backup", kind="openai", model="b", base_url=backup.url + "/v1")
        aifuncs.endpoints.update_permissions(
            "backup", [{"user_name": "alice", "permission_level": "CAN_QUERY"}]
        )
        aifuncs.endpoints.put_ai_gateway("llm", {"fallback_config": {"enabled": True, "endpoint": "backup"}})
        until(
            lambda: secured.call("alice", "POST", INVOKE.format("llm"), json=chat()).status_code == 200,
            "the fallback answers",
        )
        shown = secured.call("admin", "GET", "/api/2.0/serving-endpoints/llm").json()
        assert aifuncs.endpoints.get_ai_gateway("llm")["fallback_config"] == {
            "enabled": True,
            "endpoint": "backup",
        }
        assert "created" not in json.dumps(shown.get("ai_gateway", {}))
        aifuncs.endpoints.delete("backup")
        gov.grant_entitlement("mallory")
        port = trap.url.rsplit(":", 1)[1]
        EgressPolicy(secured.home / "catalog.db").allow(f"127.0.0.1:{port}", gov.whoami())
        made = secured.call("mallory", "POST", "/api/2.0/serving-endpoints",
                            json={"name": "backup", "config": rest_config([external("x", trap.url + "/v1")])})  # fmt: skip
        assert made.status_code == 200, made.text
        opened = secured.call("mallory", "PATCH", "/api/2.0/permissions/serving-endpoints/backup",
                              json={"access_control_list": [{"user_name": "alice", "permission_level": "CAN_QUERY"}]})  # fmt: skip
        assert opened.status_code == 200, opened.text
        for i in range(3):
            secured.call("alice", "POST", INVOKE.format("llm"), json=chat(f"alice's private words {i}"))
        assert not any("private words" in json.dumps(b) for b in trap.stats.bodies)
        # the admin names the new one on purpose: then it is llm's fallback again
        aifuncs.endpoints.put_ai_gateway("llm", {"fallback_config": {"enabled": True, "endpoint": "backup"}})
        until(
            lambda: (
                secured.call("alice", "POST", INVOKE.format("llm"), json=chat("named again")).status_code
                == 200
            ),
            "the newly named fallback answers",
        )
        assert trap.stats.requests >= 1


# -- streams that fall back -----------------------------------------------------------------------------------


def streamed(secured: Secured, who: str, name: str, text: str) -> tuple[int, str, str]:
    """A streamed chat: its status, the served-model-name header and the whole text the client received."""
    with httpx.stream("POST", secured.url + INVOKE.format(name), json=chat(text, stream=True),
                      headers=secured.headers(who), timeout=60) as stream:  # fmt: skip
        if stream.status_code != 200:
            return stream.status_code, "", stream.read().decode()
        lines = [line for line in stream.iter_lines() if line.startswith("data: {")]
        pieces = [json.loads(line[6:])["choices"][0].get("delta", {}).get("content") or "" for line in lines]
        return 200, stream.headers["served-model-name"], "".join(pieces)


def test_a_stream_that_falls_back_keeps_every_guardrail_and_accounts_for_every_attempt(
    secured: Secured,
) -> None:
    card = "card 4111 1111 1111 1111"
    with FakeServer(faults=DEAD) as dead, FakeServer(keep_bodies=True, stream_pieces=6) as spare:
        aifuncs.endpoints.update("llm", served_entities=[
            entity("prod", dead.url, 100, **QUICK), entity("spare", spare.url, 0),
        ])  # fmt: skip
        aifuncs.endpoints.put_ai_gateway("llm", {
            "guardrails": {"output": {"pii": {"behavior": "MASK"}}}, "fallback_config": {"enabled": True},
        })  # fmt: skip
        status, header, text = until(
            lambda: (got := streamed(secured, "alice", "llm", card))[1] == "spare" and got,
            "the entity fallback",
        )
        assert status == 200 and "4111" not in text and "echo" in text, text  # masked whole, then streamed
        # then a fallback endpoint whose own guardrails hold for the stream
        aifuncs.endpoints.update("llm", served_entities=[entity("prod", dead.url, 100, **QUICK)])
        aifuncs.endpoints.create("backup", kind="openai", model="b", base_url=spare.url + "/v1")
        aifuncs.endpoints.update_permissions(
            "backup", [{"user_name": "alice", "permission_level": "CAN_QUERY"}]
        )
        aifuncs.endpoints.put_ai_gateway("backup", {
            "guardrails": {"input": {"invalid_keywords": ["Project Falcon"]}, "output": {"pii": {"behavior": "MASK"}}},
        })  # fmt: skip
        aifuncs.endpoints.put_ai_gateway("llm", {"fallback_config": {"enabled": True, "endpoint": "backup"}})
        status, header, text = until(
            lambda: (got := streamed(secured, "alice", "llm", card))[1] not in ("", "spare") and got,
            "the endpoint fallback",
        )
        assert status == 200 and header == "backup" and "4111" not in text and "echo" in text, (header, text)
        blocked = streamed(secured, "alice", "llm", "about project falcon")
        assert blocked[0] == 400, blocked
        assert not any("falcon" in json.dumps(b).lower() for b in spare.stats.bodies)
    rows = until(
        lambda: (found := usage("SELECT endpoint, served_entity, status, usage_context FROM aifuncs_usage"
                                " WHERE requester = 'alice' AND status IN ('ok', 'error')"))
        and {("llm", "prod", "error"), ("llm", "spare", "ok"), ("backup", "backup", "ok")}
        <= {r[:3] for r in found} and found,
        "a row for each failed attempt and each answer",
    )  # fmt: skip
    assert all("fallback_from" in (r[3] or "") for r in rows if r[2] == "ok"), rows
    assert not usage("SELECT * FROM aifuncs_usage WHERE status = 'interrupted'")


# -- a server killed mid-fallback -----------------------------------------------------------------------------


def test_a_server_killed_mid_fallback_leaves_every_sent_request_in_the_usage_log(
    secured: Secured, tmp_path: Path
) -> None:
    """The entity failed (paid) and the fallback endpoint's request is in flight when the server is SIGKILLed:
    the usage log (replayed from the dead process's journal by the server still running) holds both."""
    with FakeServer(faults=DEAD) as dead, FakeServer(delay_s=60) as slow:
        aifuncs.endpoints.update("llm", base_url=dead.url + "/v1", max_retries=0)
        aifuncs.endpoints.create("backup", kind="openai", model="b", base_url=slow.url + "/v1")
        aifuncs.endpoints.update_permissions(
            "backup", [{"user_name": "alice", "permission_level": "CAN_QUERY"}]
        )
        aifuncs.endpoints.put_ai_gateway("llm", {"fallback_config": {"enabled": True, "endpoint": "backup"}})
        port = free_port()
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
        env.pop("AIFUNCS_TOKEN", None)
        log = (tmp_path / "doomed.log").open("w")
        server = subprocess.Popen([sys.executable, "-m", "aifuncs.cli", "serve", "--port", str(port)], env=env,
                                  stdout=log, stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
        try:
            url = f"http://127.0.0.1:{port}"
            until(lambda: _answers(url + "/health"), "the server starts", timeout_s=120)
            asking = threading.Thread(
                target=lambda: _post(url + INVOKE.format("llm"), secured.headers("alice"), chat("paid twice"))
            )
            asking.start()
            until(lambda: slow.stats.in_flight == 1, "the fallback's request is in flight")
            assert dead.stats.requests == 1
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(timeout=30)
            asking.join(timeout=30)
        finally:
            if server.poll() is None:
                os.killpg(server.pid, signal.SIGKILL)
                server.wait(timeout=30)
            log.close()
    rows = until(
        lambda: (found := usage("SELECT endpoint, status, requester FROM aifuncs_usage WHERE requester = 'alice'"))
        and {("llm", "error", "alice"), ("backup", "interrupted", "alice")} <= set(found) and found,
        "both sent requests in the usage log",
    )  # fmt: skip
    assert len(rows) == 2, rows


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.TransportError:
        return False


def _post(url: str, headers: dict[str, str], body: Any) -> None:
    with contextlib.suppress(httpx.TransportError):
        httpx.post(url, json=body, headers=headers, timeout=120)


def test_fallbacks_stop_at_the_depth_bound_and_each_attempt_is_counted_for_its_caller(
    secured: Secured,
) -> None:
    """a -> b -> c -> d -> e -> f, every one dead but f (each step named by the admin, no cycle): a request is
    asked of at most MAX_FALLBACK_DEPTH endpoints after its own, once each, every attempt a usage row of alice."""
    from aifuncs.session._bind import MAX_FALLBACK_DEPTH

    names = ["a", "b", "c", "d", "e", "f"]
    with FakeServer(faults=DEAD) as dead, FakeServer() as alive:
        for name in names:
            url = (alive if name == "f" else dead).url
            aifuncs.endpoints.create(name, kind="openai", model=name, base_url=url + "/v1", max_retries=0)
            aifuncs.endpoints.update_permissions(
                name, [{"user_name": "alice", "permission_level": "CAN_QUERY"}]
            )
        for name, target in zip(
            names[-2::-1], names[:0:-1], strict=True
        ):  # e -> f first: no cycle on the way
            aifuncs.endpoints.put_ai_gateway(name, {"fallback_config": {"enabled": True, "endpoint": target}})
        assert MAX_FALLBACK_DEPTH < len(names) - 1
        answered = secured.call("alice", "POST", INVOKE.format("a"), json=chat("deep"))
        # the last endpoint asked is e (the 4th fallback); f is never reached
        assert answered.status_code != 200 and "Endpoint 'e'" in answered.json()["message"], answered.text
        assert dead.stats.requests == MAX_FALLBACK_DEPTH + 1 and alive.stats.requests == 0
        assert secured.call("alice", "POST", INVOKE.format("b"), json=chat("shallower")).status_code == 200
        assert alive.stats.requests == 1
    rows = until(
        lambda: len(found := usage("SELECT endpoint, status FROM aifuncs_usage WHERE requester = 'alice'"))
        >= 2 * MAX_FALLBACK_DEPTH + 1 and found,
        "a row for every attempt",
    )  # fmt: skip
    assert sorted(r[0] for r in rows if r[1] == "error") == sorted([*names[:5], *names[1:5]]), rows


def test_a_batch_whose_every_row_a_guardrail_blocks_keeps_its_answers_type(home: Path) -> None:
    """What a fallback endpoint's guardrail met over REST (a 500), from SQL: STRUCT requests, every row blocked,
    failures kept per row."""
    aifuncs.endpoints.create("p", kind="python", function="sample_models:shouted", input_format="arrow",
                             returns="VARCHAR")  # fmt: skip
    aifuncs.endpoints.put_ai_gateway("p", {"guardrails": {"input": {"invalid_keywords": ["falcon"]}}})
    query = (
        "SELECT ai_query('p', struct_pack(text := 'falcon ' || i), failOnError => false) FROM range(3) t(i)"
    )
    rows = aifuncs.sql(aifuncs.connect(), query).fetchall()
    assert [r[0]["result"] for r in rows] == [None] * 3
    assert all("blocked by the input guardrail" in r[0]["errorMessage"] for r in rows), rows


def test_an_endpoint_name_with_a_final_newline_is_refused() -> None:
    with pytest.raises(InvalidEndpointName):
        aifuncs.endpoints.create("llm2\n", kind="openai", model="m", base_url="http://127.0.0.1:9/v1")


def test_a_non_admin_may_not_name_another_registry(secured: Secured) -> None:
    gov.grant_entitlement("alice")
    alice = default_catalog().acting_as(gov.directory().get("alice"))
    for uri in ("models://profile@host/wine/1", "models:/wine/1/../../x", "models:/wine"):
        with pytest.raises(PermissionDenied, match="registered model"):
            alice.create("other", "mlflow", model_uri=uri)
    made = alice.create("other", "mlflow", model_uri="models:/wine@champion")  # this server's registry: fine
    assert made.options["model_uri"] == "models:/wine@champion"


def test_a_caller_may_not_forge_the_fallback_label(secured: Secured) -> None:
    body = {"messages": [{"role": "user", "content": "hi"}], "usage_context": {"fallback_from": "prod"}}
    forged = secured.call("alice", "POST", "/serving-endpoints/llm/invocations", json=body)
    assert forged.status_code == 400 and "may not set 'fallback_from'" in forged.json()["message"]
    assert secured.upstream.stats.requests == 0
    with pytest.raises(AifuncsError, match="may not set 'fallback_from'"):
        aifuncs.sql(aifuncs.connect(), "SELECT 1", usage_context={"fallback_from": "x"})
