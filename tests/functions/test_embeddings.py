"""ai_embed and ai_similarity on the offline default (all-MiniLM-L6-v2 in-process) and on a remote
OpenAI-style embedding endpoint."""

from __future__ import annotations

import math

import duckdb
import pytest
from servers import FakeServer

import aifuncs
from aifuncs.errors import AifuncsError


def test_embeddings_of_the_default_model(con: duckdb.DuckDBPyConnection) -> None:
    con.execute(
        "CREATE TABLE docs AS SELECT * FROM (VALUES (1, 'refund please'), (2, 'refund please'), (3, '  '),"
        " (4, NULL), (5, 'The weather is sunny')) v(id, body)"
    )
    relation = aifuncs.sql(con, "SELECT id, ai_embed(body) AS v FROM docs ORDER BY id")
    assert relation is not None and [str(t) for t in relation.types] == ["INTEGER", "FLOAT[]"]
    rows = dict(relation.fetchall())
    assert aifuncs.endpoints.default("embedding").kind == "sentence_transformers"  # nothing was configured
    assert len(rows[1]) == 384 and math.isclose(sum(x * x for x in rows[1]), 1.0, rel_tol=1e-4)
    assert rows[1] == rows[2] and rows[3] is None and rows[4] is None
    used = con.sql("SELECT sum(rows) FROM aifuncs_usage WHERE endpoint = 'minilm'").fetchall()[0][0]
    assert used == 2  # two distinct texts embedded


def test_similarity_ranks_meaning(con: duckdb.DuckDBPyConnection) -> None:
    (same, close, far) = aifuncs.sql(
        con,
        "SELECT ai_similarity('I want my money back', 'I want my money back'),"
        " ai_similarity('I want my money back', 'Please refund my purchase'),"
        " ai_similarity('I want my money back', 'The weather is sunny today')",
    ).fetchall()[0]
    assert math.isclose(same, 1.0, rel_tol=1e-4)
    assert close > far + 0.2


def test_a_remote_embedding_endpoint_and_a_wrong_one(con: duckdb.DuckDBPyConnection) -> None:
    with FakeServer() as server:
        aifuncs.endpoints.create(
            "embed", kind="openai", model="e", task="embeddings", base_url=server.url + "/v1"
        )
        aifuncs.endpoints.create("chat", kind="openai", model="m", base_url=server.url + "/v1")
        rows = aifuncs.sql(
            con,
            "SELECT ai_embed('abc', endpoint => 'embed'), ai_similarity('ab', 'abcd', endpoint => 'embed')",
        ).fetchall()
        assert rows == [([3.0, 1.0], pytest.approx((2 * 4 + 1) / math.sqrt(5 * 17)))]
        with pytest.raises(AifuncsError, match="ai_embed needs an embedding endpoint; 'chat' answers"):
            aifuncs.sql(con, "SELECT ai_embed('abc', endpoint => 'chat')")


def test_classify_with_an_embedding_endpoint_picks_the_nearest_label(con: duckdb.DuckDBPyConnection) -> None:
    rows = aifuncs.sql(
        con,
        "SELECT ai_classify(t, ['billing and refunds', 'weather'], endpoint => 'minilm') FROM"
        " (VALUES ('I was charged twice, refund me'), ('It will rain all week')) v(t)",
    ).fetchall()
    assert rows == [("billing and refunds",), ("weather",)]
    with pytest.raises(AifuncsError, match="ai_summarize needs a chat endpoint; 'minilm'"):
        aifuncs.sql(con, "SELECT ai_summarize('x', endpoint => 'minilm')")


def test_a_label_scores_the_mean_similarity_of_its_phrasings() -> None:
    import numpy as np
    import pyarrow as pa

    from aifuncs.functions.tasks import Task

    task = Task("ai_classify", "", "content", "label", None, "VARCHAR", ("a", "b"),
                label_text=("{label} one", "{label} two"))  # fmt: skip
    assert task.label_texts() == ["a one", "a two", "b one", "b two"]
    # The text is nearest one phrasing of b, but nearer both of a's on the mean.
    vectors = [[1.0, 0.0, 0.0], [0.8, 0.6, 0.0], [0.0, 0.0, 1.0], [0.6, 0.0, 0.8], [0.95, 0.1, 0.3]]
    answers, errors = task.nearest_labels(pa.array(vectors, pa.list_(pa.float32())), pa.string())
    assert answers.to_pylist() == ["a"] and errors == [None]
    assert float(np.dot(vectors[4], vectors[3])) < float(np.dot(vectors[4], vectors[0]))  # (checked by hand)


def test_sentiment_examples_and_lexicon_read_tone_not_topic(con: duckdb.DuckDBPyConnection) -> None:
    con.execute(
        "CREATE TABLE t AS SELECT * FROM (VALUES (1, 'I have a question about my refund, when will it arrive?'),"
        " (2, 'Thanks a lot, the refund arrived and I am delighted.'),"
        " (3, 'My refund never came and nobody answers. Disgraceful.'),"
        " (4, 'The headphones sound great, but the battery died after a day and I am annoyed.')) v(id, text)"
    )
    rows = aifuncs.sql(con, "SELECT id, ai_analyze_sentiment(text) FROM t ORDER BY id").fetchall()
    assert [r[1] for r in rows] == ["neutral", "positive", "negative", "mixed"]
