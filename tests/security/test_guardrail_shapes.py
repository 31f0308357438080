"""Guardrails hold whatever shape a request or an answer takes: every message of a chat (system ones too),
every string field of a record (nested too), every prompt of a completions list, every input of an embeddings
list, an HTTP request's body, SQL requests built as STRUCTs and ARRAYs. A blocked text never reaches the
upstream; a masked one reaches it masked; an answer's PII comes back masked in every shape, streamed too."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import duckdb
import pytest
from servers import FakeServer

import aifuncs
from security.conftest import Secured

CARD = "4111 1111 1111 1111"
EMAIL = "ana.lopez@example.com"
KEYWORD = "Project Falcon"
INVOCATIONS = "/serving-endpoints/llm/invocations"


def _gateway(guardrails: dict[str, Any], name: str = "llm") -> None:
    aifuncs.endpoints.put_ai_gateway(name, {"guardrails": guardrails})


def _chat(*messages: tuple[str, str], **extra: Any) -> dict[str, Any]:
    return {"messages": [{"role": r, "content": c} for r, c in messages], **extra}


def _guarded(secured: Secured, guardrails: dict[str, Any]) -> None:
    """`llm` and an embedding endpoint `emb` of the same upstream, both with `guardrails`."""
    aifuncs.endpoints.create("emb", kind="openai", model="e", task="embeddings",
                             base_url=secured.upstream.url + "/v1")  # fmt: skip
    aifuncs.endpoints.update_permissions("emb", [{"user_name": "alice", "permission_level": "CAN_QUERY"}])
    _gateway(guardrails)
    _gateway(guardrails, "emb")


def test_blocked_texts_in_every_request_shape_are_refused_and_never_sent(secured: Secured) -> None:
    _guarded(secured, {"input": {"pii": {"behavior": "BLOCK"}, "invalid_keywords": ["project falcon"]}})
    system_card = _chat(("system", f"Bill card {CARD}."), ("user", "hello"))
    system_keyword = _chat(("system", f"You work on {KEYWORD}."), ("user", "hello"))
    among_several = _chat(
        ("user", "hi"), ("assistant", "hello"), ("user", f"my card is {CARD}"), ("user", "ok")
    )
    refused = [
        ("POST", INVOCATIONS, system_card, "pii (card)"),
        ("POST", INVOCATIONS, system_keyword, "invalid keyword 'project falcon'"),
        ("POST", INVOCATIONS, among_several, "pii (card)"),
        (
            "POST",
            "/serving-endpoints/chat/completions",
            {"model": "llm", **system_keyword},
            "invalid keyword",
        ),
        ("POST", "/v1/chat/completions", {"model": "llm", **among_several}, "pii (card)"),
        ("POST", "/v1/chat/completions", {"model": "llm", "stream": True, **system_card}, "pii (card)"),
        (
            "POST",
            INVOCATIONS,
            {"dataframe_records": [{"q": "fine", "ctx": {"note": f"see {KEYWORD}"}}]},
            "invalid keyword",
        ),
        ("POST", INVOCATIONS, {"dataframe_records": [{"q": "fine", "card": CARD}]}, "pii (card)"),
        ("POST", INVOCATIONS, {"dataframe_split": {"columns": ["q"], "data": [[f"{KEYWORD}?"]]}}, "invalid"),
        ("POST", INVOCATIONS, {"prompt": ["fine", f"card {CARD}"]}, "pii (card)"),
        (
            "POST",
            "/v1/completions",
            {"model": "llm", "prompt": ["fine", f"about {KEYWORD}"]},
            "invalid keyword",
        ),
        ("POST", "/v1/embeddings", {"model": "emb", "input": ["fine", f"card {CARD}"]}, "pii (card)"),
        ("POST", "/serving-endpoints/emb/invocations", {"input": ["fine", f"{KEYWORD}"]}, "invalid keyword"),
    ]
    for method, path, body, reason in refused:
        response = secured.call("alice", method, path, json=body)
        assert response.status_code == 400, (path, body, response.text)
        message = response.json()["message"]
        assert "blocked by the input guardrail" in message and reason in message, (path, message)
        assert CARD not in message and KEYWORD not in message  # the rule is named, never the value
    # the upstream saw none of it, while a clean request of each kind still goes through
    assert not secured.upstream_saw("4111") and not secured.upstream_saw("Falcon")
    assert secured.call(
        "alice", "POST", INVOCATIONS, json=_chat(("system", "be brief"), ("user", "hi"))
    ).is_success
    assert secured.call(
        "alice", "POST", "/v1/embeddings", json={"model": "emb", "input": ["a", "b"]}
    ).is_success
    assert secured.upstream_saw("be brief")


def test_masked_texts_in_every_request_shape_reach_the_upstream_masked(secured: Secured) -> None:
    _guarded(secured, {"input": {"pii": {"behavior": "MASK"}}})
    bodies = [
        (INVOCATIONS, _chat(("system", f"Reply to {EMAIL}."), ("user", f"card {CARD}"))),
        ("/v1/chat/completions", {"model": "llm", **_chat(("user", "hi"), ("user", f"mail {EMAIL}"))}),
        (INVOCATIONS, {"dataframe_records": [{"q": "a", "ctx": {"who": EMAIL, "tags": [CARD]}}]}),
        ("/v1/completions", {"model": "llm", "prompt": ["plain", f"mail {EMAIL}"]}),
        ("/v1/embeddings", {"model": "emb", "input": ["plain", f"mail {EMAIL}"]}),
    ]
    for path, body in bodies:
        response = secured.call("alice", "POST", path, json=body)
        assert response.is_success, (path, response.text)
    assert not secured.upstream_saw(EMAIL) and not secured.upstream_saw("4111")
    assert secured.upstream_saw("Reply to [EMAIL].") and secured.upstream_saw("[CARD]")
    assert secured.upstream_saw("mail [EMAIL]")


def test_answers_come_back_masked_in_every_answer_shape(secured: Secured) -> None:
    _gateway({"output": {"pii": {"behavior": "MASK"}}})  # the upstream echoes the prompt: an email comes back
    ask = _chat(("system", "echo"), ("user", f"write to {EMAIL}"))
    chat = secured.call("alice", "POST", INVOCATIONS, json=ask).json()
    assert chat["choices"][0]["message"]["content"] == "echo: write to [EMAIL]"
    openai = secured.call("alice", "POST", "/v1/chat/completions", json={"model": "llm", **ask}).json()
    assert openai["choices"][0]["message"]["content"] == "echo: write to [EMAIL]"
    streamed = secured.call(
        "alice", "POST", "/v1/chat/completions", json={"model": "llm", "stream": True, **ask}
    )
    assert streamed.is_success and "[EMAIL]" in streamed.text and EMAIL not in streamed.text
    completions = secured.call(
        "alice", "POST", "/v1/completions", json={"model": "llm", "prompt": [EMAIL, "x"]}
    )
    assert [c["text"] for c in completions.json()["choices"]] == ["echo: [EMAIL]", "echo: x"]
    records = secured.call("alice", "POST", INVOCATIONS, json={"dataframe_records": [{"q": EMAIL}]}).json()
    assert EMAIL not in json.dumps(records) and "[EMAIL]" in records["predictions"][0]
    assert secured.upstream_saw(EMAIL)  # it was asked: the answer is what the guard masked


@pytest.fixture
def upstream(home: object) -> Iterator[FakeServer]:
    with FakeServer(keep_bodies=True) as server:
        aifuncs.endpoints.create("llm", kind="openai", model="m", base_url=server.url + "/v1")
        aifuncs.endpoints.create("api", kind="http", base_url=server.url, allowed_methods=["POST"],
                                 allowed_paths=["/hooks"])  # fmt: skip
        yield server


def _saw(server: FakeServer, text: str) -> bool:
    return any(text in json.dumps(body) for body in server.stats.bodies)


def test_sql_struct_array_and_http_requests_are_screened(upstream: FakeServer) -> None:
    _gateway({"input": {"pii": {"behavior": "BLOCK"}, "invalid_keywords": ["project falcon"]}})
    _gateway({"input": {"pii": {"behavior": "BLOCK"}}}, "api")
    con = aifuncs.connect()
    con.execute(
        f"CREATE TABLE notes AS SELECT * FROM (VALUES (1, 'hello'), (2, 'card {CARD}'), (3, 'the {KEYWORD} plan'))"
        " t(id, body)"
    )
    queries = {
        "struct": "SELECT id, ai_query('llm', struct_pack(q := 'summarise', ctx := struct_pack(text := body)),"
        " failOnError => false) FROM notes ORDER BY id",
        "array": "SELECT id, ai_query('llm', ['summarise', body], failOnError => false) FROM notes ORDER BY id",
        "streamed": "SELECT id, CASE WHEN id > 0 THEN ai_query('llm', struct_pack(q := body), failOnError => false)"
        " END FROM notes ORDER BY id",
    }
    for shape, query in queries.items():
        rows = aifuncs.sql(con, query).fetchall()
        assert rows[0][1]["errorMessage"] is None, shape
        assert rows[1][1] == {"result": None, "errorMessage": "blocked by the input guardrail: pii (card)"}, (
            shape
        )
        assert (
            rows[2][1]["errorMessage"] == "blocked by the input guardrail: invalid keyword 'project falcon'"
        )
    with pytest.raises(duckdb.Error, match="blocked by the input guardrail \\(pii \\(card\\)\\)"):
        aifuncs.sql(
            con,
            "SELECT id, http_request('api', 'POST', '/hooks', json_object('note', body)::VARCHAR) AS r FROM notes"
            " WHERE id < 3 ORDER BY id",
            dialect="databricks",
        ).fetchall()
    assert aifuncs.sql(con, "SELECT http_request('api', 'POST', '/hooks', '{\"a\": 1}').status_code",
                       dialect="databricks").fetchall() == [(200,)]  # fmt: skip
    assert _saw(upstream, "hello") and not _saw(upstream, "4111") and not _saw(upstream, "Falcon")


def test_sql_struct_answers_and_masked_struct_requests(upstream: FakeServer) -> None:
    _gateway({"input": {"pii": {"behavior": "MASK"}}, "output": {"pii": {"behavior": "MASK"}}})
    con = aifuncs.connect()
    (answer,) = aifuncs.sql(
        con, f"SELECT ai_query('llm', struct_pack(q := 'mail', who := [{EMAIL!r}]))"
    ).fetchall()[0]
    assert EMAIL not in answer and "[EMAIL]" in answer
    assert _saw(upstream, "[EMAIL]") and not _saw(upstream, EMAIL)
    _gateway({"output": {"pii": {"behavior": "MASK"}}})  # the answer's own text, masked as a STRUCT's field
    (typed,) = aifuncs.sql(
        con,
        f"SELECT ai_query('llm', {('tell ' + EMAIL)!r}, returnType => 'STRUCT<echo: STRING, length: INT>')",
    ).fetchall()[0]
    assert typed == {"echo": "tell [EMAIL]", "length": len("tell " + EMAIL)}


def test_valid_topics_judge_a_structs_texts(upstream: FakeServer) -> None:
    _gateway(
        {"input": {"valid_topics": ["billing and payments", "shipping and delivery"]}}
    )  # the built-in MiniLM
    con = aifuncs.connect()
    rows = aifuncs.sql(
        con,
        "SELECT id, ai_query('llm', struct_pack(ctx := struct_pack(question := q)), failOnError => false)"
        " FROM (VALUES (1, 'When will my package arrive?'), (2, 'Write me a poem about dragons')) t(id, q)"
        " ORDER BY id",
    ).fetchall()
    assert rows[0][1]["errorMessage"] is None
    assert rows[1][1]["errorMessage"].startswith("blocked by the input guardrail: off topic (nearest '")
    assert _saw(upstream, "package") and not _saw(upstream, "dragons")
