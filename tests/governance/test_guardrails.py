"""Guardrails on a real query: blocked rows never reach the model, masked values reach nothing, each decision
is counted with its reason."""

from __future__ import annotations

import json
from pathlib import Path

import duckdb
import pandas as pd
import pytest

import aifuncs
from aifuncs.errors import ConfigError, GuardrailBlocked

EMAIL = "ana.lopez@example.com"
CARD = "4111 1111 1111 1111"


@pytest.fixture
def con(home: Path) -> duckdb.DuckDBPyConnection:
    aifuncs.endpoints.create(
        "shout", kind="python", function="sample_models:shouted", input_format="arrow", returns="VARCHAR"
    )
    connection = aifuncs.connect()
    connection.execute(
        "CREATE TABLE notes AS SELECT * FROM (VALUES (1, 'hello there'), (2, 'mail me at " + EMAIL + "'),"
        " (3, 'card " + CARD + " please'), (4, 'the Project Falcon plan')) t(id, body)"
    )
    return connection


def gateway(guardrails: dict[str, object]) -> None:
    aifuncs.endpoints.put_ai_gateway(
        "shout", {"guardrails": guardrails, "inference_table_config": {"enabled": True}}
    )


def test_input_block_keeps_rows_from_the_model(con: duckdb.DuckDBPyConnection, home: Path) -> None:
    gateway({"input": {"pii": {"behavior": "BLOCK"}, "invalid_keywords": ["project falcon"]}})
    rows = aifuncs.sql(
        con, "SELECT id, ai_query('shout', body, failOnError => false) AS r FROM notes ORDER BY id"
    ).fetchall()
    assert rows == [
        (1, {"result": "HELLO THERE", "errorMessage": None}),
        (2, {"result": None, "errorMessage": "blocked by the input guardrail: pii (email)"}),
        (3, {"result": None, "errorMessage": "blocked by the input guardrail: pii (card)"}),
        (
            4,
            {
                "result": None,
                "errorMessage": "blocked by the input guardrail: invalid keyword 'project falcon'",
            },
        ),
    ]
    sent = [
        json.loads(r[0])["inputs"]
        for r in con.sql("SELECT request FROM aifuncs_payloads WHERE status_code = 200").fetchall()
    ]
    assert sent == [["hello there"]]  # only the clean row reached the model
    assert con.sql("SELECT count(*) FROM aifuncs_payloads WHERE status_code = 400").fetchall() == [(3,)]
    (decisions,) = con.sql("SELECT error FROM aifuncs_usage WHERE status = 'guardrail'").fetchall()[0]
    assert (
        decisions == "input: invalid keyword 'project falcon': 1; input: pii (card): 1; input: pii (email): 1"
    )
    with pytest.raises(duckdb.Error) as refused:  # under failOnError the query stops, naming the rule only
        aifuncs.sql(con, "SELECT ai_query('shout', body) FROM notes WHERE id = 2").fetchall()
    message = str(refused.value)
    assert "blocked by the input guardrail (pii (email))" in message and EMAIL not in message
    with pytest.raises(GuardrailBlocked, match="pii \\(email\\)"):  # pandas raises the typed error
        aifuncs.pandas.query("shout", pd.Series(["write to " + EMAIL]))


def test_mask_sends_and_keeps_only_the_masked_text(con: duckdb.DuckDBPyConnection, home: Path) -> None:
    gateway({"input": {"pii": {"behavior": "MASK"}}})
    rows = aifuncs.sql(
        con, "SELECT id, ai_query('shout', body) FROM notes WHERE id IN (2, 3) ORDER BY id"
    ).fetchall()
    assert rows == [(2, "MAIL ME AT [EMAIL]"), (3, "CARD [CARD] PLEASE")]
    con.sql("SELECT count(*) FROM aifuncs_payloads").fetchall()
    aifuncs.runtime.default_runtime().usage.flush()
    for path in home.rglob("*"):  # the values never reached the model, the logs or the cache
        if path.is_file():
            data = path.read_bytes()
            assert EMAIL.encode() not in data and CARD.encode() not in data, path


def test_output_guard_masks_or_withholds_answers(con: duckdb.DuckDBPyConnection) -> None:
    gateway({"output": {"pii": {"behavior": "MASK"}}})
    assert aifuncs.sql(con, "SELECT ai_query('shout', body) FROM notes WHERE id = 2").fetchall() == [
        ("MAIL ME AT [EMAIL]",)
    ]
    (logged,) = con.sql("SELECT response FROM aifuncs_payloads").fetchall()[0]
    assert json.loads(logged) == {"predictions": ["MAIL ME AT [EMAIL]"]}  # logged as the caller got it
    gateway({"output": {"pii": {"behavior": "BLOCK"}}})
    rows = aifuncs.sql(
        con, "SELECT ai_query('shout', body, failOnError => false) FROM notes WHERE id IN (1, 2) ORDER BY id"
    ).fetchall()
    assert rows == [({"result": "HELLO THERE", "errorMessage": None},),
                    ({"result": None, "errorMessage": "blocked by the output guardrail: pii (email)"},)]  # fmt: skip


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"input": {"safety": True}}, "safety needs a model this version does not ship"),
        ({"output": {"valid_topics": ["billing"]}}, "unknown fields \\['valid_topics'\\]"),
        ({"input": {"valid_topics": ["billing"], "topic_threshold": 2}}, "between -1 and 1"),
        ({"input": {"pii": {"behavior": "REDACT"}}}, "behavior is one of NONE, BLOCK, MASK"),
        ({"input": {"invalid_keywords": "falcon"}}, "invalid_keywords is a list"),
        ({"inputs": {}}, "unknown fields \\['inputs'\\]"),
    ],
)
def test_bad_guardrails_are_refused(
    con: duckdb.DuckDBPyConnection, config: dict[str, object], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        aifuncs.endpoints.put_ai_gateway("shout", {"guardrails": config})


def test_valid_topics_block_what_is_off_topic(con: duckdb.DuckDBPyConnection) -> None:
    gateway(
        {"input": {"valid_topics": ["billing and payments", "shipping and delivery"]}}
    )  # the built-in MiniLM
    con.execute(
        "CREATE TABLE questions AS SELECT * FROM (VALUES (1, 'I was charged twice on my invoice, please refund'),"
        " (2, 'When will my package arrive?'), (3, 'Write me a poem about dragons'), (4, 'Tell me a joke')) t(id, q)"
    )
    rows = aifuncs.sql(
        con, "SELECT id, ai_query('shout', q, failOnError => false) AS r FROM questions ORDER BY id"
    ).fetchall()
    assert [r[1]["result"] for r in rows[:2]] == [
        "I WAS CHARGED TWICE ON MY INVOICE, PLEASE REFUND",
        "WHEN WILL MY PACKAGE ARRIVE?",
    ]
    for _, answer in rows[2:]:
        assert answer["result"] is None
        assert answer["errorMessage"].startswith("blocked by the input guardrail: off topic (nearest '")
        assert answer["errorMessage"].endswith(", needs 0.25)")
