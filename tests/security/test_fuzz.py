"""A hypothesis fuzz of every route's body and path parameters against a real `aifuncs serve`: deep nesting,
huge numbers, NaN, lone surrogates, nulls in lists, wrong types, bytes that are not JSON. With a token the
answer is never a 5xx; without one (or with a wrong one) it is always 401, whatever the body.

The routes come from the server's own /openapi.json, so a route added later is fuzzed too.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

import httpx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from security.conftest import Secured

# What the handlers read from a body, so generated bodies reach past "send {...}" into the handlers' logic.
KEYS = [
    "messages", "prompt", "input", "model", "stream", "max_tokens", "temperature", "n", "stop", "extra_params",
    "dataframe_split", "dataframe_records", "instances", "inputs", "params", "name", "config", "ai_gateway",
    "tags", "rate_limits", "description", "served_entities", "traffic_config", "access_control_list",
    "add_tags", "delete_tags", "statement", "warehouse_id", "wait_timeout", "on_wait_timeout", "parameters",
    "format", "disposition", "row_limit", "byte_limit", "catalog", "schema", "usage_tracking_config",
    "inference_table_config", "guardrails", "fallback_config", "client_request_id", "usage_context",
    "response_format", "scope", "key", "string_value", "principal", "permission",
]  # fmt: skip

HOSTILE = [
    b"[" * 5000 + b"]" * 5000,
    b'{"messages": ' + b"[" * 100 + b"]" * 100 + b"}",
    b'{"max_tokens": ' + b"9" * 5000 + b"}",
    b'{"n": -' + b"1" * 400 + b"}",
    b'{"temperature": 1e999}',
    b'{"temperature": NaN, "max_tokens": Infinity}',
    b'{"messages": [{"role": "user", "content": "\\ud800"}]}',
    b'{"model": "llm", "messages": [{"role": "user", "content": "a\\udc00b"}]}',
    b'{"name": "\\udfff"}',
    b'{"messages": [null]}',
    b'{"access_control_list": [null]}',
    b'{"access_control_list": [{"user_name": null, "permission_level": 3}]}',
    b'{"rate_limits": [null]}',
    b'{"add_tags": [null], "delete_tags": [null, 1]}',
    b'{"config": {"served_entities": [null]}}',
    b'{"served_entities": [{"external_model": null}]}',
    b'{"statement": "SELECT 1", "parameters": [null]}',
    b'{"statement": null, "wait_timeout": 5}',
    b'{"dataframe_split": {"columns": null, "data": [null]}}',
    b'{"dataframe_records": [null, 1, "x"]}',
    b'{"inputs": {"a": [null]}, "params": [null]}',
    b'{"input": [null, 1]}',
    b'{"prompt": [null]}',
    b"[]",
    b"null",
    b'"text"',
    b"\xff\xfe\x00",
    b"{",
]

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
)
values = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=10,
)  # fmt: skip
shaped = st.dictionaries(st.sampled_from(KEYS), values, max_size=4)
bodies = st.one_of(
    shaped.map(lambda b: json.dumps(b).encode()),
    values.map(lambda b: json.dumps(b).encode()),
    st.sampled_from(HOSTILE),
    st.binary(max_size=40),
)
names = st.sampled_from(
    ["llm", "LLM", "nope", "\u0661", "\u00b2", "-1", "0", "a" * 300, "%00", "llm;x", " "]
)


def _routes(secured: Secured) -> list[tuple[str, str]]:
    document = httpx.get(secured.url + "/openapi.json", timeout=30).json()
    return [
        (method.upper(), path)
        for path, operations in document["paths"].items()
        for method in operations
        if "security" in operations[method]  # the open ones (health, config, this document) take no body
    ]


def _request(
    secured: Secured, route: tuple[str, str], params: list[str], body: bytes, headers: dict[str, str]
):
    method, path = route
    for value in params:  # fill the path parameters in order
        start = path.find("{")
        if start < 0:
            break
        path = path[:start] + quote(value, safe="") + path[path.index("}", start) + 1 :]
    content = body if method in ("POST", "PUT", "PATCH") else None
    return httpx.request(
        method, secured.url + path, content=content, headers={"Content-Type": "application/json", **headers},
        timeout=60,
    )  # fmt: skip


def test_no_body_or_path_makes_a_server_error(secured: Secured) -> None:
    routes = _routes(secured)
    assert len(routes) > 30
    endpoint_id = secured.call("admin", "GET", "/api/2.0/serving-endpoints/llm").json()["id"]
    seen: dict[int, int] = {}

    @given(
        route=st.sampled_from(routes),
        params=st.lists(names | st.just(endpoint_id), min_size=2, max_size=2),
        body=bodies,
        who=st.sampled_from(["admin", "alice", "bob", "mallory"]),
    )
    @settings(max_examples=300, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    def fuzzed(route: tuple[str, str], params: list[str], body: bytes, who: str) -> None:
        response = _request(secured, route, params, body, secured.headers(who))
        seen[response.status_code] = seen.get(response.status_code, 0) + 1
        assert response.status_code < 500, (route, params, body[:200], who, response.text[:300])
        if response.status_code >= 400:  # a reason a client can read, in both error shapes
            answer: Any = response.json()
            assert answer["message"] and answer["error"]["message"], response.text

    fuzzed()
    assert any(400 <= status < 500 for status in seen) and any(status < 300 for status in seen), seen


def test_without_a_token_every_route_is_401_whatever_the_body(secured: Secured) -> None:
    routes = _routes(secured)

    @given(
        route=st.sampled_from(routes),
        params=st.lists(names, min_size=2, max_size=2),
        body=bodies,
        headers=st.sampled_from([{}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic x"}]),
    )
    @settings(max_examples=150, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    def fuzzed(route: tuple[str, str], params: list[str], body: bytes, headers: dict[str, str]) -> None:
        response = _request(secured, route, params, body, headers)
        assert response.status_code == 401, (route, params, body[:200], headers, response.text[:300])
        assert response.headers["www-authenticate"].startswith("Bearer")

    fuzzed()
    assert secured.upstream.stats.requests == 0
