"""Endpoints of several served entities: stored with every config version, checked whole, refused clearly."""

from __future__ import annotations

from typing import Any

import pytest

import aifuncs
from aifuncs import ServedEntity
from aifuncs.errors import ConfigError, UnknownProviderKind

pytestmark = pytest.mark.usefixtures("backend")  # each test on SQLite and on PostgreSQL


def doubler(name: str, share: int) -> ServedEntity:
    return ServedEntity(name, "python", {"function": "sample_models:doubled", "returns": "DOUBLE"}, share)


def test_an_endpoint_holds_entities_and_every_config_version() -> None:
    made = aifuncs.endpoints.create("ads", served_entities=[doubler("prod", 90), doubler("candidate", 10)])
    assert [(e.name, e.traffic_percentage) for e in made.entities] == [("prod", 90), ("candidate", 10)]
    assert made.kind == "python" and made.split  # what the endpoint is: its first entity
    view = made.served_entity("candidate")
    assert (view.name, view.entity_name, view.kind, view.entities) == ("ads", "candidate", "python", ())
    assert view.identity != made.served_entity("prod").identity  # each entity its own provider
    updated = aifuncs.endpoints.update("ads", served_entities=[doubler("prod", 50), doubler("next", 50)])
    assert updated.version == 2 and [e.name for e in updated.entities] == ["prod", "next"]
    history = aifuncs.endpoints.versions("ads")
    assert [[e["name"] for e in v["options"]["served_entities"]] for v in history] == [
        ["prod", "candidate"],
        ["prod", "next"],
    ]
    assert aifuncs.endpoints.get("ads").to_dict()["served_entities"][1]["traffic_percentage"] == 50


def test_one_model_endpoints_are_unchanged() -> None:
    made = aifuncs.endpoints.create("one", kind="python", function="sample_models:doubled")
    assert made.entities == () and not made.split and made.entity_name == "one"
    assert [e.name for e in made.served_entities()] == ["one"]
    assert made.served_entity("one") is made
    with pytest.raises(ConfigError, match="serves 2 entities"):
        aifuncs.endpoints.create("two", served_entities=[doubler("a", 50), doubler("b", 50)])
        aifuncs.endpoints.update("two", returns="BIGINT")


@pytest.mark.parametrize(
    ("entities", "message"),
    [
        ([], "a list of 1 to 10 entities"),
        ([doubler("a", 60)], "sum to 60"),
        ([doubler("a", 50), doubler("b", 40)], "sum to 90"),
        ([doubler("a", 50), doubler("a", 50)], "unique in an endpoint; repeated: a"),
        ([doubler(f"e{i}", 10) for i in range(11)], "at most 10 entities; 11 were given"),
        (
            [{"name": "a", "kind": "python", "options": {}}, {"name": "b", "kind": "python"}],
            "missing for: a, b",
        ),
        ([{"name": "a", "kind": "python", "traffic_percentage": 101}], "from 0 to 100"),
        ([{"name": "a b", "kind": "python", "traffic_percentage": 100}], "needs a name"),
        ([{"name": "a", "kind": "python", "model": "x"}], "unknown fields \\['model'\\]"),
        (
            [doubler("a", 50), ServedEntity("b", "openai", {"model": "m", "task": "embeddings"}, 50)],
            "answer different tasks",
        ),
        ([ServedEntity("a", "python", {"function": "m:f", "bogus": 1}, 100)], "/a': bogus"),
    ],
)
def test_bad_entities_are_refused_and_change_nothing(entities: list[Any], message: str) -> None:
    aifuncs.endpoints.create("ads", served_entities=[doubler("prod", 100)])
    with pytest.raises(ConfigError, match=message):
        aifuncs.endpoints.update("ads", served_entities=entities)
    with pytest.raises(ConfigError, match=message):
        aifuncs.endpoints.create("other", served_entities=entities)
    assert [e.name for e in aifuncs.endpoints.get("ads").entities] == ["prod"]
    assert aifuncs.endpoints.get("ads").version == 1
    assert [e.name for e in aifuncs.endpoints.list()] == ["ads"]


def test_an_unknown_kind_names_the_installed_ones() -> None:
    with pytest.raises(UnknownProviderKind, match="Installed kinds"):
        aifuncs.endpoints.create("ads", served_entities=[ServedEntity("a", "nope", {}, 100)])


def test_kind_and_entities_together_are_refused() -> None:
    with pytest.raises(ConfigError, match="either a kind with options or served_entities"):
        aifuncs.endpoints.create("ads", "python", served_entities=[doubler("a", 100)])


def test_fallback_endpoints_may_not_make_a_cycle() -> None:
    for name in ("a", "b", "c"):
        aifuncs.endpoints.create(name, kind="python", function="sample_models:doubled")
    aifuncs.endpoints.put_ai_gateway("a", {"fallback_config": {"enabled": True, "endpoint": "b"}})
    aifuncs.endpoints.put_ai_gateway("b", {"fallback_config": {"enabled": True, "endpoint": "c"}})
    with pytest.raises(ConfigError, match="makes a cycle \\(c -> a -> b -> c\\)"):
        aifuncs.endpoints.put_ai_gateway("c", {"fallback_config": {"enabled": True, "endpoint": "a"}})
    with pytest.raises(ConfigError, match="makes a cycle"):
        aifuncs.endpoints.put_ai_gateway("c", {"fallback_config": {"enabled": True, "endpoint": "C"}})
    with pytest.raises(ConfigError, match="does not exist"):
        aifuncs.endpoints.put_ai_gateway("c", {"fallback_config": {"enabled": True, "endpoint": "zz"}})
    assert "fallback_config" not in aifuncs.endpoints.get_ai_gateway("c")
    assert aifuncs.endpoints.get_ai_gateway("a")["fallback_config"] == {"enabled": True, "endpoint": "b"}
