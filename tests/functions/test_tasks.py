"""Task functions against a protocol-faithful chat server: prompts, structured replies, types, checks,
NULL and blank texts, and the messages a user sees for bad arguments."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import duckdb
import pytest
from servers import FakeServer

import aifuncs
from aifuncs.errors import AifuncsError, ConfigError


@pytest.fixture
def tickets(con: duckdb.DuckDBPyConnection) -> Iterator[tuple[duckdb.DuckDBPyConnection, FakeServer]]:
    con.execute(
        "CREATE TABLE tickets AS SELECT * FROM (VALUES (1, 'The billing page charged me twice'),"
        " (2, 'App crashes: a bug'), (3, '   '), (4, NULL), (5, 'Mail me at bob@example.com please')) v(id, body)"
    )
    with FakeServer(keep_bodies=True) as server:
        aifuncs.endpoints.create("llm", kind="openai", model="m", base_url=server.url + "/v1")
        aifuncs.endpoints.set_default("chat", "llm")
        yield con, server


def _run(con: duckdb.DuckDBPyConnection, query: str) -> tuple[list[str], list[tuple]]:  # type: ignore[type-arg]
    relation = aifuncs.sql(con, query)
    assert relation is not None
    return [str(t) for t in relation.types], relation.fetchall()


def test_classify_answers_one_of_the_labels_with_a_schema_and_temperature_zero(tickets) -> None:  # type: ignore[no-untyped-def]
    con, server = tickets
    types, rows = _run(
        con, "SELECT id, ai_classify(body, ['bug', 'billing', 'other']) FROM tickets ORDER BY id"
    )
    assert types == ["INTEGER", "VARCHAR"]
    assert rows == [(1, "billing"), (2, "bug"), (3, None), (4, None), (5, "bug")]
    body = server.stats.bodies[0]
    assert body["temperature"] == 0
    assert body["response_format"]["json_schema"]["schema"]["properties"]["label"]["enum"] == [
        "bug",
        "billing",
        "other",
    ]
    assert "- billing" in body["messages"][-1]["content"] and "exactly one" in body["messages"][-1]["content"]
    assert server.stats.requests == 3  # NULL and blank texts are not sent


def test_each_task_function_returns_its_type(tickets) -> None:  # type: ignore[no-untyped-def]
    con, _ = tickets
    cases = {
        "ai_analyze_sentiment(body)": "VARCHAR",
        "ai_classify(body, ['bug', 'billing'], multiLabel => true)": "VARCHAR[]",
        'ai_classify(body, \'{"bug": "the app misbehaves", "billing": "money"}\')': "VARCHAR",
        "ai_extract(body, ['product', 'issue'])": "STRUCT(product VARCHAR, issue VARCHAR)",
        'ai_extract(body, \'{"type": "object", "properties": {"n": {"type": "integer"}}}\')': "STRUCT(n BIGINT)",
        "ai_summarize(body)": "VARCHAR",
        "ai_summarize(body, max_words => 10)": "VARCHAR",
        "ai_translate(body, 'fr')": "VARCHAR",
        "ai_fix_grammar(body)": "VARCHAR",
        "ai_gen('Say hi to ' || id)": "VARCHAR",
        "ai_mask(body, ['email'])": "VARCHAR",
        "ai_classify(body, ['bug'], endpoint => 'llm')": "VARCHAR",
    }
    for call, expected in cases.items():
        types, rows = _run(con, f"SELECT {call} FROM tickets WHERE id = 1")
        assert types == [expected], call
        assert rows[0][0] is not None, call


def test_what_the_task_answers_means(tickets) -> None:  # type: ignore[no-untyped-def]
    con, server = tickets
    _, masked = _run(con, "SELECT ai_mask(body, ['email', 'person']) FROM tickets WHERE id = 5")
    assert masked == [("Mail me at [MASKED] please",)]
    _, translated = _run(con, "SELECT ai_translate(body, 'German') FROM tickets WHERE id = 2")
    assert translated[0][0].startswith("echo: Translate the text into German.")
    _, summary = _run(con, "SELECT ai_summarize(body, 10) FROM tickets WHERE id = 1")
    assert "at most 10 words" in summary[0][0]
    assert (
        next(b for b in server.stats.bodies if "10 words" in b["messages"][-1]["content"])["max_tokens"] == 46
    )


def test_answers_are_kept_and_reused(tickets) -> None:  # type: ignore[no-untyped-def]
    con, server = tickets
    query = "SELECT ai_classify(body, ['bug', 'billing']) FROM tickets"
    first = _run(con, query)
    sent = server.stats.requests
    assert _run(con, query) == first and server.stats.requests == sent  # temperature 0: reusable
    _run(
        con, "SELECT ai_classify(body, ['bug', 'billing', 'other']) FROM tickets"
    )  # other labels: asked again
    assert server.stats.requests == sent + 3


def test_an_answer_outside_the_labels_is_a_null_with_a_warning(tickets, caplog) -> None:  # type: ignore[no-untyped-def]
    con, _ = tickets
    aifuncs.endpoints.create(
        "free", kind="openai", model="m", base_url=aifuncs.endpoints.get("llm").options["base_url"]
    )
    with caplog.at_level(logging.WARNING, logger="aifuncs"):
        # ai_summarize's free text reply is no label: the chat server echoes the prompt
        _, rows = _run(con, "SELECT ai_analyze_sentiment(body, endpoint => 'free') FROM tickets WHERE id = 1")
    assert rows == [("positive",)]  # the schema made the server answer a label
    assert "no answer" not in caplog.text


@pytest.mark.parametrize(
    ("call", "message"),
    [
        ("ai_classify(body, [])", "the label list is empty"),
        ("ai_classify(body, ['', '  '])", "the label list is empty"),
        ("ai_classify(body, range(101)::VARCHAR[])", "101 labels is over the limit of 100"),
        ("ai_classify(body, 'bug, billing')", "labels must be a list of strings, or JSON text"),
        ('ai_extract(body, \'{"type": "object", "properties": {}}\')', "the JSON schema has no properties"),
        (
            'ai_extract(body, \'{"type": "object", "properties": {"x": {"type": "date"}}}\')',
            "property 'x' of the JSON schema has type 'date'",
        ),
        ("ai_translate(body, 'Klingon')", "unknown language 'Klingon'"),
        ("ai_summarize(body, -3)", "max_words must be a whole number"),
        ("ai_classify(body, ['a'], endpoint => 'nope')", "Unknown endpoint 'nope'"),
        ("ai_classify(body, ['a'], endpoint => 'tabular')", "ai_classify needs a chat endpoint"),
        ("ai_classify(body)", "missing labels"),
    ],
)
def test_bad_arguments_name_the_problem_before_any_call(tickets, call: str, message: str) -> None:  # type: ignore[no-untyped-def]
    con, server = tickets
    aifuncs.endpoints.create("tabular", kind="serving", url=server.url + "/invocations")
    with pytest.raises(AifuncsError, match=message):
        aifuncs.sql(con, f"SELECT {call} FROM tickets")
    assert server.stats.requests == 0


def test_without_a_default_chat_endpoint_the_builtin_local_model_is_used(
    con: duckdb.DuckDBPyConnection,
) -> None:
    endpoint = aifuncs.endpoints.default("chat")
    assert (endpoint.name, endpoint.kind) == ("smollm2", "llama_cpp")
    with pytest.raises(ConfigError, match="Unknown default role"):
        aifuncs.endpoints.set_default("vision", "smollm2")


def test_filter_in_where_and_join(tickets) -> None:  # type: ignore[no-untyped-def]
    con, server = tickets
    # The fake chat server answers `true` for every boolean: what matters here is the wiring and the type.
    types, rows = _run(con, "SELECT id FROM tickets WHERE ai_filter(body, 'is about billing') ORDER BY id")
    assert types == ["INTEGER"] and rows == [(1,), (2,), (5,)]  # NULL and blank bodies are not TRUE
    con.execute("CREATE TABLE teams AS SELECT * FROM (VALUES ('billing'), ('mobile')) t(team)")
    _, joined = _run(
        con,
        "SELECT id, team FROM tickets JOIN teams ON ai_filter(team || ': ' || body, 'the team owns the issue')"
        " WHERE id = 1 ORDER BY team",
    )
    assert joined == [(1, "billing"), (1, "mobile")]
    body = next(b for b in server.stats.bodies if "the team owns the issue" in b["messages"][-1]["content"])
    assert body["response_format"]["json_schema"]["schema"]["properties"]["answer"] == {"type": "boolean"}
    with pytest.raises(AifuncsError, match="the predicate must be a statement"):
        aifuncs.sql(con, "SELECT ai_filter(body, '  ') FROM tickets")


def test_aggregates_answer_each_group_and_reduce_large_ones_in_stages(tickets) -> None:  # type: ignore[no-untyped-def]
    con, server = tickets
    con.execute(
        "CREATE TABLE notes AS SELECT i % 2 AS team, 'note number ' || i AS body FROM range(40) t(i)"
        " UNION ALL SELECT 1, NULL"
    )
    types, rows = _run(con, "SELECT team, ai_summarize_agg(body) AS s FROM notes GROUP BY team ORDER BY team")
    assert types == ["BIGINT", "VARCHAR"]
    assert rows == [(0, "summary of 20 items"), (1, "summary of 20 items")]  # NULLs left out
    before = server.stats.requests
    # A model that takes 120 characters: 20 notes of 13-14 characters (+3 for "- " and a newline) fit 7 to
    # a prompt, so 3 prompts, then one to combine their 3 answers.
    aifuncs.endpoints.create(
        "small", kind="openai", model="m", base_url=server.url + "/v1", max_prompt_chars=120
    )
    _, staged = _run(
        con,
        "SELECT team, ai_agg(body, 'List the note numbers', endpoint => 'small') FROM notes WHERE team = 0 GROUP BY team",
    )
    assert staged == [(0, "summary of 3 items")]
    assert server.stats.requests - before == 3 + 1
    prompt = server.stats.bodies[-1]["messages"][-1]["content"]
    assert prompt.startswith("List the note numbers\n\nItems:\n- summary of")
    with pytest.raises(AifuncsError, match="the instruction must say what to do"):
        aifuncs.sql(con, "SELECT ai_agg(body, '') FROM notes")


URGENCY = """
name = "ai_urgency"
description = "How urgent a support message is."
kind = "task"
returns = "VARCHAR"
answer = "label"
labels = ["urgent", "normal"]
prompt = "Is this message urgent or normal?\\n\\nText: {message}"

[[params]]
name = "message"
kind = "column"
required = true

[[params]]
name = "endpoint"
kind = "constant"
type = "VARCHAR"
"""


def test_a_function_of_your_own_from_a_spec(tickets, home) -> None:  # type: ignore[no-untyped-def]
    con, server = tickets
    aifuncs.functions.define(URGENCY.replace('"Is this', '"Say urgent if it is urgent. Is this'))
    assert (home / "udfs" / "ai_urgency.toml").exists()
    types, rows = _run(con, "SELECT id, ai_urgency(body) FROM tickets WHERE id <= 2 ORDER BY id")
    assert types == ["INTEGER", "VARCHAR"] and rows == [(1, "urgent"), (2, "urgent")]
    assert "Say urgent if it is urgent" in server.stats.bodies[-1]["messages"][-1]["content"]
    with pytest.raises(ConfigError, match="ai_classify is a built-in function"):
        aifuncs.functions.define(URGENCY.replace("ai_urgency", "ai_classify"))
    with pytest.raises(ConfigError, match=r"its prompt holds it as \{name\}"):
        aifuncs.functions.define(URGENCY.replace("{message}", "{text}"))
    with pytest.raises(ConfigError, match="answer must be one of"):
        aifuncs.functions.define(URGENCY.replace('answer = "label"', 'answer = "poem"'))


def test_task_functions_over_a_whole_table_are_scored_ahead(tickets) -> None:  # type: ignore[no-untyped-def]
    from aifuncs.engines.duckdb import _hooks
    from aifuncs.planner import rewrite

    con, server = tickets
    for query in (
        "SELECT count(*) FROM tickets WHERE ai_filter(body, 'is about billing')",
        "SELECT ai_classify(body, ['bug', 'billing']) AS topic, count(*) FROM tickets GROUP BY topic",
    ):
        assert [p for s in rewrite(query, "duckdb", _hooks(con)) for p in s.prescores]  # on the bulk path
    assert _run(con, "SELECT count(*) FROM tickets WHERE ai_filter(body, 'is about billing')")[1] == [(3,)]
    _, topics = _run(
        con,
        "SELECT ai_classify(body, ['bug', 'billing']) AS topic, count(*) FROM tickets GROUP BY topic ORDER BY 1",
    )
    assert topics == [
        ("billing", 1),
        ("bug", 2),
        (None, 2),
    ]  # the fake model: the first label the text names, else the first
