"""Names that cannot be hijacked: a principal made again under a deleted one's name, a stored user named like the
home's owner, the built-in default endpoints, an endpoint made again under a deleted one's name."""

from __future__ import annotations

import getpass
import sqlite3
import time
from pathlib import Path

import httpx
import pytest

import aifuncs
import aifuncs.governance as gov
from aifuncs.errors import ConfigError
from aifuncs.governance import InvalidToken, identify
from security.conftest import Secured


def test_a_deleted_principals_tokens_die_with_it_and_pass_to_no_successor(home: Path) -> None:
    gov.create_user("bob")
    old = gov.create_token("bob")
    gov.delete_principal("bob")
    assert all(t.revoked_at is not None for t in gov.list_tokens("bob"))
    gov.create_user("bob")  # someone else, under the same name
    with pytest.raises(InvalidToken):
        identify(old, home)
    assert identify(gov.create_token("bob"), home).principal.name == "bob"  # the new bob's own token works


def test_a_token_older_than_its_principal_is_refused_even_if_never_revoked(home: Path) -> None:
    gov.create_user("carol")
    old = gov.create_token("carol")
    gov.delete_principal("carol")
    with sqlite3.connect(home / "catalog.db") as db:  # a home from before deletion revoked tokens
        db.execute("UPDATE tokens SET revoked_at = NULL WHERE principal = 'carol'")
    gov.create_user("carol")
    with pytest.raises(InvalidToken, match="deleted"):
        identify(old, home)


def test_the_homes_owner_cannot_be_shadowed_by_a_stored_user(home: Path) -> None:
    with pytest.raises(ConfigError, match="owns AIFUNCS_HOME"):
        gov.create_user(getpass.getuser())
    assert getpass.getuser() not in [p.name for p in gov.list_principals()]


def test_a_dead_principals_token_is_a_401_on_the_server(secured: Secured) -> None:
    assert secured.call("mallory", "GET", "/api/2.0/serving-endpoints").status_code == 200
    gov.delete_principal("mallory")
    gov.create_user("mallory")  # another person under the old name
    # the server rechecks a kept identity at most once a second: the old token must be refused by then
    deadline = time.monotonic() + 10
    status = secured.call("mallory", "GET", "/api/2.0/serving-endpoints").status_code
    while status != 401 and time.monotonic() < deadline:
        time.sleep(0.2)
        status = secured.call("mallory", "GET", "/api/2.0/serving-endpoints").status_code
    assert status == 401
    assert httpx.get(secured.url + "/health").status_code == 200


def test_the_built_in_default_names_are_reserved_for_admins(home: Path) -> None:
    from aifuncs.catalog import default_catalog
    from aifuncs.errors import PermissionDenied

    gov.create_user("mallory")
    mallory = default_catalog().acting_as(gov.directory().get("mallory"))
    for name in ("minilm", "SmolLM2", "forecaster", "parser"):
        with pytest.raises(PermissionDenied, match="only an admin"):
            mallory.create(name, kind="openai", model="m", base_url="http://127.0.0.1:9/v1")
    assert default_catalog().names() == []

    # an admin may hand CAN_MANAGE on a built-in to anyone: it still may not be changed but by an admin
    default_catalog().default("embedding")
    aifuncs.endpoints.update_permissions("minilm", [{"user_name": "mallory", "permission_level": "CAN_MANAGE"}])
    with pytest.raises(PermissionDenied, match="only an admin"):
        mallory.put_ai_gateway("minilm", {"inference_table_config": {"enabled": True}})
    with pytest.raises(PermissionDenied, match="only an admin"):
        mallory.update("minilm", model="/tmp/elsewhere")


def test_a_built_in_name_held_by_a_non_admin_is_not_followed(home: Path) -> None:
    from aifuncs.catalog import default_catalog

    gov.create_user("mallory")
    catalog = default_catalog()
    # a home where mallory made `minilm` first, before the names were reserved: she manages it
    mallory = catalog.acting_as(gov.directory().get("mallory"))
    catalog.create("minilm", kind="openai", model="m", task="embeddings", base_url="http://127.0.0.1:9/v1")
    aifuncs.endpoints.update_permissions("minilm", [{"user_name": "mallory", "permission_level": "CAN_MANAGE"}])
    with pytest.raises(ConfigError, match="managed by mallory"):
        catalog.default("embedding")  # task functions would send everyone's text to her endpoint
    with pytest.raises(ConfigError, match="managed by mallory"):
        catalog.for_guardrail(None)  # so would a guardrail's topic check
    assert mallory.get("minilm").kind == "openai"  # she still sees what she was granted
    aifuncs.endpoints.delete("minilm")
    assert catalog.default("embedding").kind == "sentence_transformers"  # the built-in one, made again


def test_rows_belong_to_the_endpoint_and_the_user_that_wrote_them_not_to_their_names(home: Path) -> None:
    """An endpoint made again under a deleted one's name, and a user made again under a deleted one's name,
    read none of their predecessors' usage or inference rows."""
    for name in ("alice", "mallory"):
        gov.create_user(name)
    make = {"kind": "python", "function": "sample_models:shouted", "input_format": "arrow", "returns": "VARCHAR"}
    aifuncs.endpoints.create("scorer", **make)
    aifuncs.endpoints.update_permissions("scorer", [{"user_name": "alice", "permission_level": "CAN_QUERY"}])
    aifuncs.endpoints.put_ai_gateway("scorer", {"inference_table_config": {"enabled": True}})
    alice = aifuncs.connect(token=gov.create_token("alice"))
    aifuncs.sql(alice, "SELECT ai_query('scorer', 'private words of alice')").fetchall()
    counts = "SELECT (SELECT count(*) FROM aifuncs_usage), (SELECT count(*) FROM aifuncs_payloads)"
    assert aifuncs.connect().sql(counts).fetchall()[0] == (1, 1)  # the admin reads them
    assert alice.sql(counts).fetchall()[0] == (1, 1)  # and so does the requester

    aifuncs.endpoints.delete("scorer")
    aifuncs.endpoints.create("scorer", **make)  # a new endpoint under the old name, managed by mallory
    aifuncs.endpoints.update_permissions("scorer", [{"user_name": "mallory", "permission_level": "CAN_MANAGE"}])
    aifuncs.endpoints.put_ai_gateway("scorer", {"inference_table_config": {"enabled": True}})
    mallory = aifuncs.connect(token=gov.create_token("mallory"))
    assert mallory.sql(counts).fetchall()[0] == (0, 0)
    aifuncs.sql(mallory, "SELECT ai_query('scorer', 'hello')").fetchall()
    assert mallory.sql(counts).fetchall()[0] == (1, 1)  # her own endpoint's rows she reads

    gov.delete_principal("alice")
    gov.create_user("alice")  # someone else named alice
    new_alice = aifuncs.connect(token=gov.create_token("alice"))
    assert new_alice.sql(counts).fetchall()[0] == (0, 0)
    assert "private words" not in str(new_alice.sql("SELECT * FROM aifuncs_payloads").fetchall())


def test_kept_answers_are_not_served_to_a_principal_made_again_under_the_name(home: Path) -> None:
    from servers import FakeServer

    with FakeServer() as upstream:
        aifuncs.endpoints.create("llm", kind="openai", model="m", base_url=upstream.url + "/v1")
        gov.create_user("alice")
        aifuncs.endpoints.update_permissions("llm", [{"user_name": "alice", "permission_level": "CAN_QUERY"}])
        query = "SELECT ai_query('llm', 'what did I ask?', cache => true)"
        aifuncs.sql(aifuncs.connect(token=gov.create_token("alice")), query).fetchall()
        assert upstream.stats.requests == 1
        aifuncs.sql(aifuncs.connect(token=gov.create_token("alice")), query).fetchall()
        assert upstream.stats.requests == 1  # her own kept answer
        gov.delete_principal("alice")
        gov.create_user("alice")  # someone else
        aifuncs.endpoints.update_permissions("llm", [{"user_name": "alice", "permission_level": "CAN_QUERY"}])
        aifuncs.sql(aifuncs.connect(token=gov.create_token("alice")), query).fetchall()
        assert upstream.stats.requests == 2  # asked afresh: the old alice's answer is not hers
