"""The `openai` kind against a real OpenAI-compatible LLM server: llama.cpp with SmolLM2-135M-Instruct."""

from __future__ import annotations

import json
from collections.abc import Iterator

import duckdb
import pytest
from servers import llama_cpp_server

import aifuncs


@pytest.fixture(scope="module")
def llama_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with llama_cpp_server(tmp_path_factory.mktemp("llama")) as url:
        yield url


@pytest.fixture
def reviews(con: duckdb.DuckDBPyConnection, llama_server: str) -> duckdb.DuckDBPyConnection:
    aifuncs.endpoints.create(
        "smollm2",
        kind="openai",
        base_url=llama_server,
        model="smollm2",
        schema_style="llama.cpp",
        max_concurrency=2,
    )
    con.execute(
        "CREATE TABLE reviews AS SELECT * FROM (VALUES (1, 'I loved this film, wonderful acting.'),"
        " (2, 'Terrible. I want my money back.'), (3, 'The soup was cold and the waiter rude.')) t(id, body)"
    )
    return con


def test_free_text_answers_one_per_row(reviews: duckdb.DuckDBPyConnection) -> None:
    rows = aifuncs.sql(
        reviews,
        "SELECT id, ai_query('smollm2', 'Summarize in five words: ' || body,"
        " modelParameters => {'max_tokens': 16, 'temperature': 0.0}) AS summary FROM reviews ORDER BY id",
    ).fetchall()
    assert [r[0] for r in rows] == [1, 2, 3]
    assert all(isinstance(r[1], str) and r[1].strip() for r in rows)
    usage = reviews.sql(
        "SELECT count(*), min(input_tokens), min(output_tokens), max(output_tokens) FROM aifuncs_usage"
    ).fetchall()[0]
    assert usage[0] == 3 and usage[1] > 5 and 0 < usage[2] and usage[3] <= 16


def test_structured_output_follows_the_json_schema(reviews: duckdb.DuckDBPyConnection) -> None:
    schema = {
        "type": "object",
        "properties": {
            "sentiment": {"type": "string", "enum": ["positive", "negative"]},
            "stars": {"type": "integer"},
        },
        "required": ["sentiment", "stars"],
    }
    rel = aifuncs.sql(
        reviews,
        "SELECT id, ai_query('smollm2', 'Rate this review: ' || body,"
        " returnType => 'STRUCT<sentiment: STRING, stars: INT>',"
        f" responseFormat => '{json.dumps(schema)}', modelParameters => {{'max_tokens': 48, 'temperature': 0.0}})"
        " AS r FROM reviews ORDER BY id",
    )
    assert str(rel.types[1]) == "STRUCT(sentiment VARCHAR, stars INTEGER)"
    rows = rel.fetchall()
    assert all(r[1]["sentiment"] in ("positive", "negative") for r in rows)
    assert all(isinstance(r[1]["stars"], int) for r in rows)


def test_task_functions_through_the_server(reviews: duckdb.DuckDBPyConnection) -> None:
    rows = aifuncs.sql(
        reviews,
        "SELECT id, ai_classify(body, ['movies', 'restaurants'], endpoint => 'smollm2') AS topic,"
        " ai_analyze_sentiment(body, endpoint => 'smollm2') AS sentiment,"
        " ai_extract(body, ['place'], endpoint => 'smollm2') AS facts,"
        " ai_filter(body, 'the writer is unhappy', endpoint => 'smollm2') AS unhappy"
        " FROM reviews ORDER BY id",
    ).fetchall()
    assert len(rows) == 3
    for _, topic, sentiment, facts, unhappy in rows:
        assert topic in ("movies", "restaurants")  # the server's grammar keeps the label in the list
        assert sentiment in ("positive", "negative", "neutral", "mixed")
        assert set(facts) == {"place"}
        assert isinstance(unhappy, bool)


def test_the_other_task_functions_through_the_server(reviews: duckdb.DuckDBPyConnection) -> None:
    aifuncs.endpoints.set_default("chat", "smollm2")  # the server's endpoint answers every chat task
    relation = aifuncs.sql(
        reviews,
        "SELECT ai_translate(body, 'fr'), ai_fix_grammar(body), ai_gen('Name a fruit.'), ai_mask(body, ['food']),"
        " ai_summarize(body, 5) FROM reviews WHERE id = 3",
    )
    assert relation is not None and all(str(t) == "VARCHAR" for t in relation.types)
    assert all(isinstance(v, str) and v.strip() for v in relation.fetchall()[0])
    (summary,) = aifuncs.sql(
        reviews, "SELECT ai_agg(body, 'Say what the reviews have in common.') FROM reviews"
    ).fetchall()[0]
    assert isinstance(summary, str) and summary.strip()
