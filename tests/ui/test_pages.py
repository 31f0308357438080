"""The pages through the same policy check as the REST API: a CAN_QUERY user sees no edit controls and the
server refuses its edits; logs and usage show each principal what it may read; the playground, SQL, jobs,
tokens and principals pages work; every asset is this package's own."""

from __future__ import annotations

import hashlib
import html
import json
import re
from pathlib import Path

import aifuncs
import aifuncs.governance as gov
from aifuncs.server.ui import STATIC

from .conftest import Ui


def _ask(ui: Ui, who: str, prompt: str) -> dict:
    client = ui.client(who)
    answer = client.post(
        "/ui/playground/ask",
        json={"endpoint": "llm", "prompt": prompt, "system": "be brief"},
        headers={"x-csrf-token": ui.csrf(client), "accept": "application/json"},
    )
    assert answer.status_code == 200, answer.text
    return answer.json()


def test_a_query_user_sees_no_edit_controls_and_edits_are_refused(ui: Ui) -> None:
    alice = ui.client("alice")
    page = alice.get("/ui/endpoints/llm")
    assert page.status_code == 200 and "Save config" not in page.text and "Delete endpoint" not in page.text
    gateway = alice.get("/ui/endpoints/llm?tab=gateway").text
    assert "Save AI gateway settings" not in gateway and "needs CAN_MANAGE" in gateway
    token = ui.csrf(alice)
    for path, data in [
        ("/ui/endpoints/llm/config", {"options": '{"model": "other"}'}),
        ("/ui/endpoints/llm/gateway", {"rate_limits": "[]"}),
        (
            "/ui/endpoints/llm/permissions",
            {"principal_type": "user", "principal": "alice", "permission_level": "CAN_MANAGE"},
        ),
        ("/ui/endpoints/llm/delete", {}),
    ]:
        assert alice.post(path, data={"csrf": token, **data}).status_code == 403, path
    assert aifuncs.endpoints.get("llm").options["model"] == "m" and aifuncs.endpoints.get("llm").version == 1
    mallory = ui.client("mallory")
    assert mallory.get("/ui/endpoints/llm").status_code == 404  # as if it did not exist
    assert "llm" not in mallory.get("/ui/endpoints").text


def test_an_admin_edits_in_place_and_grants_are_seen_by_the_grantee(ui: Ui) -> None:
    admin = ui.client("admin")
    token = ui.csrf(admin)
    assert admin.get("/ui/endpoints/llm").text.count("Save config") == 1
    saved = admin.post(
        "/ui/endpoints/llm/gateway",
        data={"csrf": token, "rate_limits": '[{"calls": 5, "key": "user", "renewal_period": "minute"}]',
              "guardrails": "", "table_enabled": "on", "retention_days": "7"},
    )  # fmt: skip
    assert saved.status_code == 303
    gateway = aifuncs.endpoints.get_ai_gateway("llm")
    assert (
        gateway["rate_limits"][0]["calls"] == 5 and gateway["inference_table_config"]["retention_days"] == 7
    )
    bad = admin.post("/ui/endpoints/llm/gateway", data={"csrf": token, "rate_limits": "[oops"})
    assert bad.status_code == 400 and "not JSON" in bad.text
    mallory = ui.client("mallory")
    assert mallory.get("/ui/endpoints/llm").status_code == 404
    granted = admin.post(
        "/ui/endpoints/llm/permissions",
        data={
            "csrf": token,
            "principal_type": "user",
            "principal": "mallory",
            "permission_level": "CAN_QUERY",
        },
    )
    assert granted.status_code == 303
    assert mallory.get("/ui/endpoints/llm").status_code == 200  # the same session sees the change
    made = admin.post("/ui/endpoints", data={"csrf": token, "name": "echo2", "kind": "python",
                                             "options": '{"function": "builtins:abs"}'})  # fmt: skip
    assert made.status_code == 303 and aifuncs.endpoints.get("echo2").kind == "python"


def test_the_playground_answers_with_tokens_and_cost_and_logs_are_each_ones_own(ui: Ui) -> None:
    aifuncs.endpoints.put_ai_gateway("llm", {"inference_table_config": {"enabled": True}})
    answer = _ask(ui, "alice", "alices-question")
    assert answer["text"] and answer["input_tokens"] and answer["latency_ms"] > 0
    assert answer["cost_usd"] > 0
    _ask(ui, "admin", "admins-question")
    alice = ui.client("alice")
    mine = alice.get("/ui/endpoints/llm?tab=logs").text
    assert mine.count("<tr id=") == 1  # her own request only
    admin = ui.client("admin")
    everyone = admin.get("/ui/endpoints/llm?tab=logs")
    assert everyone.text.count("<tr id=") == 2
    found = admin.get("/ui/endpoints/llm?tab=logs&q=alices-question").text
    assert found.count("<tr id=") == 1
    rid = re.search(r"/ui/endpoints/llm/logs/([0-9a-f-]+)", found)
    assert rid is not None
    detail = admin.get(f"/ui/endpoints/llm/logs/{rid.group(1)}", headers={"hx-request": "true"})
    assert "alices-question" in detail.text and "<html" not in detail.text  # a fragment, opened in place
    page = admin.get(f"/ui/endpoints/llm/logs/{rid.group(1)}")  # followed without script: a page
    assert page.status_code == 200 and "<html" in page.text and "alices-question" in page.text
    assert 'href="/ui/endpoints/llm?tab=logs"' in page.text
    assert "alices-question" not in ui.client("bob").get(f"/ui/endpoints/llm/logs/{rid.group(1)}").text
    csv_text = admin.get("/ui/endpoints/llm/logs.csv").text
    assert csv_text.splitlines()[0].startswith("time,request_id") and len(csv_text.splitlines()) == 3


def test_usage_reads_rollups_each_sees_its_own_and_exports_csv(ui: Ui) -> None:
    _ask(ui, "alice", "one")
    _ask(ui, "alice", "two")
    _ask(ui, "admin", "three")
    admin = ui.client("admin")
    page = admin.get("/ui/usage?by=user&days=1").text
    assert ">alice<" in page and ">admin<" in page
    alice = ui.client("alice")
    hers = alice.get("/ui/usage?by=user&days=1&mine=1").text
    assert ">alice<" in hers and ">admin<" not in hers
    assert ">admin<" not in alice.get("/ui/usage?by=user&days=1").text  # she manages nothing
    exported = admin.get("/ui/usage.csv?by=endpoint&days=1").text.splitlines()
    assert exported[0].startswith("endpoint,requests") and exported[1].startswith("llm,3,")
    listed = admin.get("/ui/endpoints").text
    assert re.search(r'<td class="num">3</td>', listed)  # the last 24 h's requests
    series = admin.get("/ui/endpoints/llm/series?range=6h").json()
    assert sum(series["requests"]) == 3 and len(series["x"]) == 6
    assert alice.get("/ui/endpoints/llm/series").status_code == 403  # charts show every caller's


def test_sql_estimates_then_runs_as_the_principal(ui: Ui) -> None:
    alice = ui.client("alice")
    headers = {"x-csrf-token": ui.csrf(alice), "accept": "application/json"}
    query = "SELECT ai_query('llm', 'hello ' || x) AS a FROM range(3) t(x)"
    estimate = alice.post("/ui/sql/explain", json={"statement": query}, headers=headers)
    assert estimate.status_code == 200 and estimate.json()["calls"] == 1
    assert ui.upstream.stats.requests == 0  # nothing sent to estimate
    ran = alice.post("/ui/sql/statements", json={"statement": "SELECT 41 + 1 AS n"}, headers=headers).json()
    while ran["status"]["state"] in ("PENDING", "RUNNING"):
        ran = alice.get(f"/ui/sql/statements/{ran['statement_id']}", headers=headers).json()
    assert ran["result"]["data_array"] == [["42"]] or ran["result"]["data_array"] == [[42]]
    mallory = ui.client("mallory")
    denied = mallory.post(
        "/ui/sql/explain",
        json={"statement": query},
        headers={"x-csrf-token": ui.csrf(mallory), "accept": "application/json"},
    )
    assert denied.status_code == 404  # she may not see it: as if it did not exist


def test_jobs_tokens_and_principals(ui: Ui) -> None:
    assert ui.client("alice").get("/ui/jobs").status_code == 200
    bob = ui.client("bob")
    assert bob.get("/ui/principals").status_code == 403
    assert (
        bob.post("/ui/principals", data={"csrf": ui.csrf(bob), "action": "create", "name": "eve"}).status_code
        == 403
    )
    admin = ui.client("admin")
    token = ui.csrf(admin)
    assert (
        admin.post(
            "/ui/principals", data={"csrf": token, "action": "create", "kind": "group", "name": "analysts"}
        ).status_code
        == 303
    )
    assert (
        admin.post(
            "/ui/principals",
            data={"csrf": token, "action": "add-member", "name": "analysts", "member": "bob"},
        ).status_code
        == 303
    )
    assert "analysts" in admin.get("/ui/principals").text
    tokens_page = bob.get("/ui/tokens").text
    assert "bob" in tokens_page and "alice" not in tokens_page


def test_every_asset_is_local_and_the_vendored_files_are_what_was_recorded(ui: Ui) -> None:
    admin = ui.client("admin")
    for path in (
        "/ui/endpoints",
        "/ui/endpoints/llm",
        "/ui/usage",
        "/ui/playground",
        "/ui/sql",
        "/ui/jobs",
        "/ui/tokens",
        "/ui/principals",
        "/ui/login",
    ):
        html = admin.get(path).text
        for ref in re.findall(r'(?:src|href)="([^"]+)"', html):
            if ref.startswith(("data:", "?", "#")) or ref.startswith("/ui/") and "/static/" not in ref:
                continue
            assert ref.startswith("/ui/static/"), (path, ref)
            assert admin.get(ref).status_code == 200, ref
    vendored = json.loads((Path(STATIC) / "vendor" / "VENDORED.json").read_text())
    for entry in vendored:
        data = (Path(STATIC) / "vendor" / entry["file"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == entry["sha256"], entry["file"]
        assert entry["license"] and entry["version"]


def test_deletes_and_revokes_ask_first_on_a_page_of_their_own(ui: Ui) -> None:
    admin = ui.client("admin")
    token = ui.csrf(admin)
    asked = admin.post("/ui/endpoints/llm/delete", data={"csrf": token})
    assert asked.status_code == 200 and "Delete llm?" in asked.text
    assert aifuncs.endpoints.get("llm").name == "llm"  # nothing deleted yet
    assert 'name="confirmed" value="yes"' in asked.text and 'href="/ui/endpoints/llm"' in asked.text  # cancel
    assert ui.client("alice").post("/ui/endpoints/llm/delete", data={"csrf": token}).status_code == 403
    bob = ui.client("bob")
    bobs_token = next(t.id for t in gov.list_tokens() if t.principal == "bob")
    asked = bob.post(f"/ui/tokens/{bobs_token}/revoke", data={"csrf": ui.csrf(bob)})
    assert asked.status_code == 200 and f"Revoke token {bobs_token}?" in asked.text
    assert bob.get("/ui/tokens").status_code == 200  # still signed in: nothing revoked
    asked = admin.post("/ui/principals", data={"csrf": token, "action": "delete", "name": "mallory"})
    assert asked.status_code == 200 and "Delete mallory?" in asked.text
    assert 'name="name" value="mallory"' in asked.text and 'name="action" value="delete"' in asked.text
    assert "mallory" in [p.name for p in gov.list_principals()]
    mallory = ui.client("mallory")
    refused = mallory.post(
        "/ui/principals", data={"csrf": ui.csrf(mallory), "action": "delete", "name": "bob"}
    )
    assert refused.status_code == 403  # not asked: refused

    done = admin.post(
        "/ui/principals", data={"csrf": token, "action": "delete", "name": "mallory", "confirmed": "yes"}
    )
    assert done.status_code == 303 and "mallory" not in [p.name for p in gov.list_principals()]
    done = bob.post(f"/ui/tokens/{bobs_token}/revoke", data={"csrf": ui.csrf(bob), "confirmed": "yes"})
    assert done.status_code == 303 and bob.get("/ui/tokens").status_code == 303  # its session ended
    done = admin.post("/ui/endpoints/llm/delete", data={"csrf": token, "confirmed": "yes"})
    assert done.status_code == 303 and "llm" not in [e.name for e in aifuncs.endpoints.list()]


def test_the_catalogs_own_flags_are_neither_shown_nor_changed_from_the_form(ui: Ui) -> None:
    assert "egress_checked" in aifuncs.endpoints.get("llm").options  # recorded when it was saved
    admin = ui.client("admin")
    page = admin.get("/ui/endpoints/llm").text
    assert "egress_checked" not in page
    shown = re.search(r'<textarea id="cfg-options" name="options"[^>]*>([^<]*)</textarea>', page)
    assert shown is not None
    options = json.loads(html.unescape(shown.group(1)))
    assert options["model"] == "m"
    options["model"] = "m2"
    saved = admin.post(
        "/ui/endpoints/llm/config",
        data={"csrf": ui.csrf(admin), "description": "", "options": json.dumps(options)},
    )
    assert saved.status_code == 303
    after = aifuncs.endpoints.get("llm").options
    assert after["model"] == "m2" and after["egress_checked"] is False  # an admin's config: unrestricted
    assert "egress_checked" not in admin.get("/ui/endpoints/llm").text  # nor in the versions
    assert "egress_checked" not in ui.client("bob").get("/ui/endpoints/llm").text
