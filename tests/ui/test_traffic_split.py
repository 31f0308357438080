"""Served entities in the UI against a real `aifuncs serve`, through httpx: the list and the endpoint page show
each entity, its traffic percentage and the fallback setting; only CAN_MANAGE sees the traffic form, and a
forged POST from anyone else is refused with nothing changed; a bad split shows the catalog's message and
changes nothing (the fallback switched in the same form included); usage breaks requests down by the entity
that answered, with those a fallback answered, each principal seeing what it may."""

from __future__ import annotations

import os
import re
import sqlite3
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from html import unescape
from pathlib import Path
from typing import Any

import httpx
import pytest
from servers import FakeServer, Faults, free_port, running

import aifuncs
import aifuncs.governance as gov
from aifuncs import ServedEntity
from aifuncs.governance.egress import EgressPolicy

PEOPLE = ("admin", "carol", "alice", "bob", "mallory")  # carol: CAN_MANAGE on ads, not an admin


@dataclass
class Site:
    url: str
    tokens: dict[str, str]
    prod: FakeServer
    candidate: FakeServer
    home: Path

    def browser(self, who: str) -> httpx.Client:
        """A client signed in to the UI as `who` (its session cookie)."""
        client = httpx.Client(base_url=self.url, follow_redirects=False, timeout=60)
        signed = client.post("/ui/login", data={"token": self.tokens[who], "next": "/ui/endpoints"})
        assert signed.status_code == 303, signed.text
        return client

    @staticmethod
    def csrf(client: httpx.Client) -> str:
        found = re.search(r'name="csrf" value="([0-9a-f]+)"', client.get("/ui/tokens").text)
        assert found is not None
        return found.group(1)


def shares() -> dict[str, int]:
    return {e.name: e.traffic_percentage for e in aifuncs.endpoints.get("ads").served_entities()}


def chat(name: str, url: str, share: int) -> ServedEntity:
    options = {"model": name, "base_url": url + "/v1", "max_retries": 0}
    return ServedEntity(name, "openai", options, share)


@pytest.fixture
def site(home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Site]:
    monkeypatch.delenv("AIFUNCS_TOKEN", raising=False)
    gov.create_user("admin", admin=True)
    for name in PEOPLE[1:]:
        gov.create_user(name)
    tokens = {name: gov.create_token(name) for name in PEOPLE}
    with FakeServer(faults=Faults(server_error=1.0)) as prod, FakeServer() as candidate:
        aifuncs.endpoints.create(
            "ads", served_entities=[chat("prod", prod.url, 50), chat("candidate", candidate.url, 50)]
        )
        aifuncs.endpoints.create("other", kind="openai", model="m", base_url=candidate.url + "/v1")
        aifuncs.endpoints.update_permissions(
            "ads",
            [{"user_name": "carol", "permission_level": "CAN_MANAGE"},
             {"user_name": "alice", "permission_level": "CAN_QUERY"},
             {"user_name": "bob", "permission_level": "CAN_VIEW"}],
        )  # fmt: skip
        port = free_port()
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
        command = [sys.executable, "-m", "aifuncs.cli", "serve", "--port", str(port)]
        url = f"http://127.0.0.1:{port}"
        with running(command, url + "/health", tmp_path / "serve.log", env):
            yield Site(url, tokens, prod, candidate, home)


def form(client: httpx.Client, **fields: Any) -> dict[str, Any]:
    """The traffic form as the endpoint page fills it (version, percentages, fallback), changed by `fields`."""
    page = client.get("/ui/endpoints/ads").text
    version = re.search(r'name="version" value="(\d+)"', page)
    assert version is not None, "no traffic form on the page"
    found: dict[str, Any] = {"csrf": Site.csrf(client), "version": version.group(1)}
    for name, value in re.findall(r'name="share:([^"]+)"[^>]*value="(\d+)"', page):
        found[f"share:{name}"] = value
    if 'id="fb-on" name="fallback" checked' in page:
        found["fallback"] = "on"
    return {**found, **fields}


def test_only_a_manager_sees_and_uses_the_traffic_form(site: Site) -> None:
    before = aifuncs.endpoints.get("ads").version
    admin = site.browser("admin")
    listed = admin.get("/ui/endpoints").text
    for entity, share in (("prod", 50), ("candidate", 50)):  # each entity, its kind, model and share
        cell = re.search(rf'data-entity="{entity}">(.*?)</div>', listed, re.S)
        assert cell is not None and "openai" in cell.group(1) and f"{entity}</code>" in cell.group(1)
        assert f"<span data-share>{share}%</span>" in cell.group(1)
    page = admin.get("/ui/endpoints/ads").text
    assert 'id="traffic"' in page and 'id="fallback">off' in page
    for entity in ("prod", "candidate"):
        row = re.search(rf'<tr data-entity="{entity}">(.*?)</tr>', page, re.S)
        assert row is not None and '<span class="state">Ready</span>' in row.group(1)
        assert "<code>openai · " in row.group(1) and "data-share>50%" in row.group(1)

    # Those without CAN_MANAGE see the entities but no form, and a forged POST is refused: nothing changes
    for who in ("alice", "bob"):
        client = site.browser(who)
        seen = client.get("/ui/endpoints/ads").text
        assert 'data-entity="prod"' in seen and 'data-entity="candidate"' in seen
        assert 'id="traffic"' not in seen and "Save traffic split" not in seen
        forged = {"csrf": site.csrf(client), "version": str(before), "share:prod": "0",
                  "share:candidate": "100", "fallback": "on"}  # fmt: skip
        refused = client.post("/ui/endpoints/ads/traffic", data=forged)
        assert refused.status_code == 403 and "CAN_MANAGE" in unescape(refused.text), who
    mallory = site.browser("mallory")
    hidden = mallory.post(
        "/ui/endpoints/ads/traffic",
        data={
            "csrf": site.csrf(mallory),
            "version": str(before),
            "share:prod": "0",
            "share:candidate": "100",
        },
    )
    assert hidden.status_code == 404  # as if it did not exist
    # without the session's CSRF token, or from another origin, even a manager's POST is refused
    assert admin.post("/ui/endpoints/ads/traffic", data={**form(admin), "csrf": "0" * 32}).status_code == 403
    other_site = admin.post(
        "/ui/endpoints/ads/traffic", data=form(admin), headers={"origin": "http://evil.example"}
    )
    assert other_site.status_code == 403
    assert shares() == {"prod": 50, "candidate": 50} and aifuncs.endpoints.get("ads").version == before
    assert "fallback_config" not in aifuncs.endpoints.get_ai_gateway("ads")

    # A bad split shows the catalog's message and changes nothing, the fallback switched with it included
    bad = admin.post("/ui/endpoints/ads/traffic", data=form(admin, **{"share:prod": "60"}, fallback="on"))
    assert bad.status_code == 400
    assert "sum to 110 (prod=60, candidate=50); they must sum to 100" in unescape(bad.text)
    not_a_number = admin.post("/ui/endpoints/ads/traffic", data=form(admin, **{"share:prod": "half"}))
    assert not_a_number.status_code == 400 and "whole number from 0 to 100, not 'half'" in unescape(
        not_a_number.text
    )
    assert shares() == {"prod": 50, "candidate": 50} and aifuncs.endpoints.get("ads").version == before
    assert "fallback_config" not in aifuncs.endpoints.get_ai_gateway("ads")

    # carol manages ads but may not see `other`: naming it as the fallback is the catalog's refusal, and
    # the split sent with it is not written either
    carol = site.browser("carol")
    assert 'id="traffic"' in carol.get("/ui/endpoints/ads").text
    refused = carol.post(
        "/ui/endpoints/ads/traffic",
        data=form(
            carol, **{"share:prod": "20", "share:candidate": "80"}, fallback="on", fallback_endpoint="other"
        ),
    )
    assert refused.status_code == 400 and "'other' does not exist (or you may not see it)" in unescape(
        refused.text
    )
    assert shares() == {
        "prod": 50,
        "candidate": 50,
    } and "fallback_config" not in aifuncs.endpoints.get_ai_gateway("ads")

    # Her split re-saves each entity's options as hers: the catalog's egress rule for a non-admin refuses it,
    # and the fallback written first is put back (one change or none)
    egress = carol.post(
        "/ui/endpoints/ads/traffic",
        data=form(carol, **{"share:prod": "20", "share:candidate": "80"}, fallback="on"),
    )
    assert egress.status_code == 403 and "egress allow-list" in unescape(egress.text)
    assert shares() == {"prod": 50, "candidate": 50}
    assert "fallback_config" not in aifuncs.endpoints.get_ai_gateway("ads")
    EgressPolicy(site.home / "catalog.db").allow("127.0.0.1", gov.whoami())

    # A page loaded before another change is stale: refused, not applied over the change
    stale = form(carol, **{"share:prod": "10", "share:candidate": "90"})
    saved = carol.post(
        "/ui/endpoints/ads/traffic",
        data=form(carol, **{"share:prod": "20", "share:candidate": "80"}, fallback="on"),
    )
    assert saved.status_code == 303, unescape(saved.text)[-600:]
    assert saved.headers["location"].endswith("saved=traffic")
    assert shares() == {"prod": 20, "candidate": 80}
    assert aifuncs.endpoints.get_ai_gateway("ads")["fallback_config"] == {"enabled": True}
    conflict = carol.post("/ui/endpoints/ads/traffic", data=stale)
    assert conflict.status_code == 409 and "reload" in unescape(conflict.text) and shares()["prod"] == 20
    shown = carol.get(saved.headers["location"]).text
    assert "Traffic split saved" in shown and 'id="fallback">on' in shown
    for entity, share in (("prod", 20), ("candidate", 80)):
        row = re.search(rf'<tr data-entity="{entity}">(.*?)</tr>', shown, re.S)
        assert row is not None and f'<td class="num" data-share>{share}%</td>' in row.group(1)

    # Saving the AI gateway tab keeps the fallback set here
    kept = carol.post(
        "/ui/endpoints/ads/gateway",
        data={"csrf": site.csrf(carol), "rate_limits": "[]", "guardrails": "", "table_enabled": "on"},
    )
    assert kept.status_code == 303
    assert aifuncs.endpoints.get_ai_gateway("ads")["fallback_config"] == {"enabled": True}
    # ...and the options editor of a split endpoint edits its entities (not the first one's options alone)
    editor = re.search(r'<textarea id="cfg-options"[^>]*>(.*?)</textarea>', shown, re.S)
    assert (
        editor is not None
        and "served_entities" in editor.group(1)
        and "egress_checked" not in editor.group(1)
    )
    edited = carol.post(
        "/ui/endpoints/ads/config",
        data={"csrf": site.csrf(carol), "description": "two models", "options": unescape(editor.group(1))},
    )
    assert edited.status_code == 303 and aifuncs.endpoints.get("ads").description == "two models"
    assert shares() == {"prod": 20, "candidate": 80}


def usage_by_entity(home: Path) -> dict[str, tuple[int, int]]:
    """From the raw usage log: per served entity, its requests and those a fallback answered."""
    db = sqlite3.connect(home / "usage.db")
    try:
        rows = db.execute(
            "SELECT served_entity, count(*), sum(usage_context LIKE '%fallback_from%') FROM usage"
            " WHERE endpoint = 'ads' GROUP BY 1"
        ).fetchall()
    finally:
        db.close()
    return {entity: (int(n), int(f or 0)) for entity, n, f in rows}


def test_usage_breaks_requests_down_by_the_entity_that_answered(site: Site) -> None:
    aifuncs.endpoints.put_ai_gateway("ads", {"fallback_config": {"enabled": True}})
    body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}
    headers = {"Authorization": f"Bearer {site.tokens['alice']}"}
    deadline = time.monotonic() + 30
    answered = []
    while len(answered) < 30 or not site.prod.stats.requests:  # the server reads the gateway within a second
        answer = httpx.post(
            site.url + "/serving-endpoints/ads/invocations", json=body, headers=headers, timeout=60
        )
        if answer.status_code == 200:
            answered.append(answer.headers["served-model-name"])
        assert time.monotonic() < deadline, answer.text
    assert set(answered) == {"candidate"}  # prod answers 500 to everything: its share fell back
    admin = site.browser("admin")
    page = admin.get("/ui/usage?by=entity&days=1").text  # the server writes its usage before it reads
    raw = usage_by_entity(site.home)
    assert 0 < raw["candidate"][1] <= site.prod.stats.requests  # each fallback was first asked of prod
    for entity, (requests, fallbacks) in raw.items():
        row = re.search(rf"ads</a> / {entity}</td>(.*?)</tr>", page, re.S)
        assert row is not None, entity
        assert re.search(rf"<b>{requests}</b>", row.group(1)) and f"data-fallbacks>{fallbacks}<" in row.group(
            1
        )
    total_fallbacks = sum(f for _, f in raw.values())
    assert re.search(rf'id="fallbacks"><small>Answered by a fallback</small><b>{total_fallbacks}</b>', page)
    overview = admin.get("/ui/endpoints/ads").text
    row = re.search(r'<tr data-entity="candidate">(.*?)</tr>', overview, re.S)
    assert row is not None and f"data-fallbacks>{raw['candidate'][1]}<" in row.group(1)
    series = admin.get("/ui/endpoints/ads/series?range=6h", headers={"accept": "application/json"}).json()
    assert sum(series["entities"]["candidate"]) == raw["candidate"][0]
    assert sum(series["fallbacks"]) == total_fallbacks
    csv_text = admin.get("/ui/usage.csv?by=entity&days=1").text
    assert csv_text.splitlines()[0].endswith(",fallbacks") and "ads/candidate," in csv_text

    # each sees what it may: alice her own requests (all of them here), bob none, carol (manager) all
    assert f"<b>{raw['candidate'][0]}</b>" in site.browser("alice").get("/ui/usage?by=entity&days=1").text
    assert "ads</a> / candidate" not in site.browser("bob").get("/ui/usage?by=entity&days=1").text
    assert "ads</a> / candidate" in site.browser("carol").get("/ui/usage?by=entity&days=1").text
