"""Task functions on the offline default: SmolLM2-135M-Instruct run in-process by llama-cpp-python
(the `llama_cpp` kind), with no server, no network and no key. The JSON schema of each task becomes a
grammar, so every answer is a valid value even from so small a model."""

from __future__ import annotations

import logging

import duckdb
import pytest

import aifuncs

REVIEWS = [
    "I loved this film, the acting was wonderful.",
    "Terrible service. I want my money back.",
    "The soup was cold and the waiter was rude.",
]


@pytest.fixture
def reviews(con: duckdb.DuckDBPyConnection) -> duckdb.DuckDBPyConnection:
    con.execute("CREATE TABLE reviews (id INTEGER, body VARCHAR)")
    con.executemany("INSERT INTO reviews VALUES (?, ?)", list(enumerate(REVIEWS)))
    return con


def test_classify_and_sentiment_always_answer_a_label(reviews: duckdb.DuckDBPyConnection) -> None:
    rows = aifuncs.sql(
        reviews,
        "SELECT id, ai_classify(body, ['movies', 'restaurants', 'shopping']) AS topic,"
        " ai_analyze_sentiment(body) AS sentiment, ai_classify(body, ['praise', 'complaint'], multiLabel => true)"
        " AS kinds FROM reviews ORDER BY id",
    ).fetchall()
    assert aifuncs.endpoints.default("chat").kind == "llama_cpp"  # nothing was configured
    assert [r[0] for r in rows] == [0, 1, 2]
    assert all(r[1] in ("movies", "restaurants", "shopping") for r in rows)
    assert all(r[2] in ("positive", "negative", "neutral", "mixed") for r in rows)
    assert all(r[3] and set(r[3]) <= {"praise", "complaint"} for r in rows)


def test_text_and_struct_answers(reviews: duckdb.DuckDBPyConnection) -> None:
    rows = aifuncs.sql(
        reviews,
        "SELECT ai_summarize(body, 8) AS s, ai_extract(body, ['dish', 'complaint']) AS e FROM reviews WHERE id = 2",
    )
    assert rows is not None and [str(t) for t in rows.types] == [
        "VARCHAR",
        "STRUCT(dish VARCHAR, complaint VARCHAR)",
    ]
    summary, extracted = rows.fetchall()[0]
    assert isinstance(summary, str) and summary.strip()
    assert set(extracted) == {"dish", "complaint"}


def test_a_text_longer_than_the_context_is_cut_with_a_warning(
    con: duckdb.DuckDBPyConnection, caplog: pytest.LogCaptureFixture
) -> None:
    aifuncs.endpoints.create("tiny", kind="llama_cpp", n_ctx=512, max_tokens=32)
    con.execute("CREATE TABLE long AS SELECT repeat('The soup was cold. ', 2000) AS body")
    with caplog.at_level(logging.WARNING, logger="aifuncs"):
        (answer,) = aifuncs.sql(
            con, "SELECT ai_analyze_sentiment(body, endpoint => 'tiny') FROM long"
        ).fetchall()[0]
    assert answer in ("positive", "negative", "neutral", "mixed")
    assert "1 texts longer than endpoint 'tiny' takes" in caplog.text


REST = (
    "SELECT ai_translate(body, 'fr') AS fr, ai_fix_grammar('i has went home') AS fixed,"
    " ai_gen('Name a fruit.') AS gen, ai_mask(body, ['food']) AS masked,"
    " ai_filter(body, 'the writer complains') AS complains FROM reviews WHERE id = 2"
)


def test_the_other_task_functions_answer_with_their_types(reviews: duckdb.DuckDBPyConnection) -> None:
    relation = aifuncs.sql(reviews, REST)
    assert relation is not None
    assert [str(t) for t in relation.types] == ["VARCHAR", "VARCHAR", "VARCHAR", "VARCHAR", "BOOLEAN"]
    fr, fixed, gen, masked, complains = relation.fetchall()[0]
    assert all(isinstance(v, str) and v.strip() for v in (fr, fixed, gen, masked))
    assert isinstance(complains, bool)
    (summary,) = aifuncs.sql(reviews, "SELECT ai_summarize_agg(body) FROM reviews").fetchall()[0]
    assert isinstance(summary, str) and summary.strip()
