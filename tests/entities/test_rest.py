"""Served entities over REST against a real `aifuncs serve`: create and update config with several entities
and traffic_config (databricks-sdk's and mlflow's shapes), the split and the fallback per request, the
`served-model-name` header, one entity's own route, a stream that falls back before its first chunk."""

from __future__ import annotations

import json
import os
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from servers import FakeServer, Faults, free_port, running

import aifuncs
import aifuncs.governance as gov
from aifuncs import ServedEntity


@dataclass
class Served:
    url: str
    headers: dict[str, str]
    prod: FakeServer
    candidate: FakeServer

    def post(self, path: str, body: Any) -> httpx.Response:
        return httpx.post(self.url + path, json=body, headers=self.headers, timeout=60)

    def put(self, path: str, body: Any) -> httpx.Response:
        return httpx.put(self.url + path, json=body, headers=self.headers, timeout=60)


def external(name: str, url: str) -> dict[str, Any]:
    return {
        "name": name,
        "external_model": {
            "name": name,
            "provider": "openai",
            "task": "llm/v1/chat",
            "openai_config": {"openai_api_base": url + "/v1"},
        },
    }


def config(prod: str, candidate: str, split: tuple[int, int]) -> dict[str, Any]:
    return {
        "served_entities": [external("prod", prod), external("candidate", candidate)],
        "traffic_config": {
            "routes": [
                {"served_entity_name": "prod", "traffic_percentage": split[0]},
                {"served_entity_name": "candidate", "traffic_percentage": split[1]},
            ]
        },
    }


@pytest.fixture
def served(home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Served]:
    monkeypatch.delenv("AIFUNCS_TOKEN", raising=False)
    gov.create_user("ops", admin=True)
    token = gov.create_token("ops")
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    env.pop("AIFUNCS_TOKEN", None)
    command = [sys.executable, "-m", "aifuncs.cli", "serve", "--port", str(port)]
    with (
        FakeServer(faults=Faults(server_error=1.0)) as prod,
        FakeServer(stream_pieces=10, stream_delay_s=0.05) as candidate,
        running(command, f"http://127.0.0.1:{port}/health", tmp_path / "serve.log", env),
    ):
        yield Served(f"http://127.0.0.1:{port}", {"Authorization": f"Bearer {token}"}, prod, candidate)


def wait_for_version(served: Served, name: str, version: int) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        got = httpx.get(f"{served.url}/api/2.0/serving-endpoints/{name}", headers=served.headers).json()
        if got["config"]["config_version"] == version:
            return
        time.sleep(0.1)
    raise AssertionError(f"the server did not see version {version} of {name}")


def test_entities_over_rest(served: Served) -> None:
    # prod answers every request with HTTP 500; candidate is healthy
    made = served.post(
        "/api/2.0/serving-endpoints",
        {"name": "ads", "config": config(served.prod.url, served.candidate.url, (70, 30))},
    )
    assert made.status_code == 200, made.text
    routes = made.json()["config"]["traffic_config"]["routes"]
    assert routes == [
        {"served_entity_name": "prod", "traffic_percentage": 70},
        {"served_entity_name": "candidate", "traffic_percentage": 30},
    ]
    assert [e["name"] for e in made.json()["config"]["served_entities"]] == ["prod", "candidate"]
    # The dead entity answers at once (no retries: a quick test); set as a new config version from Python
    quick = [
        ServedEntity(e.name, e.kind, {**e.options, "max_retries": 0}, e.traffic_percentage)
        for e in aifuncs.endpoints.get("ads").entities
    ]
    aifuncs.endpoints.update("ads", served_entities=quick)
    chat = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}
    wait_for_version(served, "ads", 2)
    # Without fallback: the split sends some requests to the dead entity, which fail
    statuses = Counter(served.post("/serving-endpoints/ads/invocations", chat).status_code for _ in range(40))
    assert statuses[200] > 0 and sum(v for k, v in statuses.items() if k >= 500) > 0, statuses
    # With fallback: every request answered, the header names who answered
    gateway = served.put("/api/2.0/serving-endpoints/ads/ai-gateway", {"fallback_config": {"enabled": True}})
    assert gateway.status_code == 200 and gateway.json()["fallback_config"] == {"enabled": True}
    answers = [served.post("/serving-endpoints/ads/invocations", chat) for _ in range(40)]
    assert [a.status_code for a in answers] == [200] * 40
    assert {a.headers["served-model-name"] for a in answers} == {"candidate"}
    # One entity's own route: that entity only (the dead one fails: no fallback from a chosen entity)
    one = served.post("/serving-endpoints/ads/served-models/candidate/invocations", chat)
    assert one.status_code == 200 and one.headers["served-model-name"] == "candidate"
    missing = served.post("/serving-endpoints/ads/served-models/nope/invocations", chat)
    assert missing.status_code == 404 and "prod, candidate" in missing.json()["message"]
    # A stream falls back before its first chunk and streams from the fallback
    with httpx.stream(
        "POST",
        served.url + "/serving-endpoints/ads/invocations",
        json={**chat, "stream": True},
        headers=served.headers,
        timeout=60,
    ) as stream:
        assert stream.status_code == 200 and stream.headers["served-model-name"] == "candidate"
        chunks = [line for line in stream.iter_lines() if line.startswith("data: {")]
    assert len(chunks) > 3
    text = "".join(json.loads(c[6:])["choices"][0]["delta"].get("content", "") for c in chunks)
    assert text == "echo: hi"


def test_update_config_changes_the_split_and_bad_configs_change_nothing(served: Served) -> None:
    url = served.candidate.url
    made = served.post("/api/2.0/serving-endpoints", {"name": "ads", "config": config(url, url, (50, 50))})
    assert made.status_code == 200, made.text
    updated = served.put("/api/2.0/serving-endpoints/ads/config", config(url, url, (0, 100)))
    assert updated.status_code == 200 and updated.json()["config"]["config_version"] == 2
    bad = [
        (config(url, url, (60, 60)), "sum to 120"),
        (
            {
                **config(url, url, (50, 50)),
                "traffic_config": {"routes": [{"served_entity_name": "x", "traffic_percentage": 100}]},
            },
            "names 'x'",
        ),
        ({"served_entities": [external("a", url), external("b", url)]}, "needs traffic_config.routes"),
        (
            {
                "served_entities": [external(f"e{i}", url) for i in range(11)],
                "traffic_config": {"routes": [{"served_entity_name": "e0", "traffic_percentage": 100}]},
            },
            "at most 10",
        ),
        (
            {
                "served_entities": [external("a", url), external("a", url)],
                "traffic_config": {"routes": [{"served_entity_name": "a", "traffic_percentage": 100}]},
            },
            "twice|unique",
        ),
    ]
    for body, message in bad:
        refused = served.put("/api/2.0/serving-endpoints/ads/config", body)
        assert refused.status_code == 400, (message, refused.text)
        assert __import__("re").search(message, refused.json()["message"]), refused.json()
    got = httpx.get(served.url + "/api/2.0/serving-endpoints/ads", headers=served.headers).json()
    assert got["config"]["config_version"] == 2
    assert [r["traffic_percentage"] for r in got["config"]["traffic_config"]["routes"]] == [0, 100]
    chat = {"messages": [{"role": "user", "content": "hi"}]}
    assert {
        served.post("/serving-endpoints/ads/invocations", chat).headers["served-model-name"]
        for _ in range(10)
    } == {"candidate"}
