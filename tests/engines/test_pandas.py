"""The pandas accessors: every method against a real endpoint (the offline SmolLM2 and MiniLM models, an
HTTP server on 127.0.0.1), the index kept, the runtime's batching, de-duplication and budgets shared."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from servers import FakeServer

import aifuncs
from aifuncs.errors import AifuncsError, ArgumentError, BudgetExceeded

REVIEWS = pd.Series(
    [
        "I loved this film, the acting was wonderful.",
        None,
        "Terrible service. I want my money back, email me at ann@example.com.",
    ],
    index=pd.Index(["a", "b", "c"], name="review"),
    name="body",
)


@pytest.fixture
def chat(home: Path) -> Iterator[FakeServer]:
    with FakeServer() as server:
        aifuncs.endpoints.create("chat", kind="openai", base_url=server.url + "/v1", model="m")
        aifuncs.endpoints.create(
            "echo", kind="serving", url=server.url + "/invocations", returns="BIGINT", max_batch_rows=100,
            usd_per_1k_rows=1.0,
        )  # fmt: skip
        yield server


def assert_like_input(result: pd.Series, source: pd.Series = REVIEWS) -> None:
    assert result.index.equals(source.index) and result.name == source.name
    assert isinstance(result.dtype, pd.ArrowDtype)  # Arrow-backed
    assert result.isna().tolist() == source.isna().tolist()  # NULL in, NULL out, no model call


# Chat tasks on the offline default chat endpoint (SmolLM2, in-process): a grammar keeps answers valid.
def test_label_tasks_on_the_local_model() -> None:
    topic = REVIEWS.ai.classify(["movies", "restaurants", "shopping"])
    assert_like_input(topic)
    assert set(topic.dropna()) <= {"movies", "restaurants", "shopping"}
    sentiment = REVIEWS.ai.analyze_sentiment()
    assert_like_input(sentiment)
    assert set(sentiment.dropna()) <= {"positive", "negative", "neutral", "mixed"}
    kinds = REVIEWS.ai.classify(["praise", "complaint"], multi_label=True)
    assert all(set(k) <= {"praise", "complaint"} for k in kinds.dropna())
    wanted = REVIEWS.ai.filter("The text is about a film")
    assert_like_input(wanted)
    assert wanted.dtype == pd.ArrowDtype(pa.bool_())
    kept = REVIEWS[wanted.fillna(False).astype(bool)]  # usable as a mask
    assert (
        kept.index.tolist() == [i for i, w in wanted.items() if w is not pd.NA and w]
        and "b" not in kept.index
    )


def test_text_and_struct_tasks_on_the_local_model() -> None:
    for result in (
        REVIEWS.ai.summarize(max_words=8),
        REVIEWS.ai.translate("es"),
        REVIEWS.ai.fix_grammar(),
        REVIEWS.ai.gen(),
        REVIEWS.ai.mask(["email"]),
    ):
        assert_like_input(result)
        assert all(isinstance(t, str) and t.strip() for t in result.dropna())
    extracted = REVIEWS.ai.extract(["person", "complaint"])
    assert_like_input(extracted)
    assert all(set(v) == {"person", "complaint"} for v in extracted.dropna())
    assert isinstance(REVIEWS.ai.summarize_agg(), str)
    assert isinstance(REVIEWS.ai.agg("What do the reviewers want?"), str)


def test_embeddings_and_similarity_on_the_local_model() -> None:
    vectors = REVIEWS.ai.embed()
    assert_like_input(vectors)
    assert {len(v) for v in vectors.dropna()} == {384}  # all-MiniLM-L6-v2
    queries = pd.Series(["a great movie", "x", "bad service, refund"], index=["c", "b", "a"])
    aligned = REVIEWS.ai.similarity(queries)  # aligned on the index, as pandas does
    assert aligned.index.equals(REVIEWS.index)
    movie = REVIEWS.ai.similarity("a great movie")  # one text for every row
    assert aligned["c"] == pytest.approx(movie["c"])  # "c" got its own query, "a great movie"
    assert aligned["a"] < movie["a"]  # the film review is nearer a movie than a refund
    assert movie["a"] > movie["c"]
    # An embedding endpoint answers a label task too (the nearest label).
    topic = REVIEWS.ai.classify(
        ["movies", "restaurants"], endpoint=aifuncs.endpoints.default("embedding").name
    )
    assert topic["a"] == "movies"


# ai_query and the runtime behind it, against an HTTP server on 127.0.0.1.
def test_query_keeps_the_index_and_order_of_a_large_frame(chat: FakeServer) -> None:
    frame = pd.DataFrame({"x": np.arange(10_000) % 97}, index=np.arange(10_000)[::-1] * 3)
    answers = frame.x.ai.query("echo")
    assert answers.index.equals(frame.index) and answers.dtype == pd.ArrowDtype(pa.int64())
    assert (answers.to_numpy() == 2 * frame.x.to_numpy()).all()
    assert chat.stats.rows == 97  # de-duplicated: one request per distinct value
    frame.x.ai.query("echo")
    assert chat.stats.rows == 97  # and kept: the second time nothing is sent
    plain = frame.x.ai.query("echo", dtype_backend="numpy_nullable")
    assert plain.dtype == np.int64 and plain.index.equals(frame.index)


def test_query_options_and_struct_requests(chat: FakeServer) -> None:
    frame = pd.DataFrame({"name": ["ann", "bob"], "age": [31, 42]}, index=[7, 9])
    typed = frame.ai.query("chat", columns=["name"], return_type="STRUCT<echo: STRING, length: INT>")
    assert typed.index.equals(frame.index) and typed.name == "chat"
    assert typed[7]["echo"] == '{"name": "ann"}' and typed[7]["length"] == 15
    captured = frame.name.ai.query("chat", return_type="INT", fail_on_error=False)
    assert (
        captured.tolist()[0]["result"] is None
        and "does not parse as int32" in captured.tolist()[0]["errorMessage"]
    )
    frame.name.ai.query("chat", model_parameters={"temperature": 0.5, "max_tokens": 7})
    with pytest.raises(ArgumentError, match="no option 'temprature'"):
        frame.name.ai.classify(["a", "b"], endpoint="chat", temprature=1)
    numbered = pd.DataFrame({0: [1], "when": pd.to_datetime(["2026-01-01"])}).ai.query("chat")
    assert numbered.tolist() == ['echo: {"0": 1, "when": "2026-01-01 00:00:00"}']  # any column label
    categories = pd.Series(["billing issue", "a bug", "billing issue"], dtype="category")
    assert categories.ai.classify(["bug", "billing"], endpoint="chat").tolist() == [
        "billing",
        "bug",
        "billing",
    ]
    with pytest.raises(ArgumentError, match="no column 'agee'"):
        frame.ai.query("chat", columns=["agee"])
    # One column's name (not a list) selects it as pandas does: its values are the request, not its letters.
    named = frame.ai.query("chat", "name")
    assert named.tolist() == ["echo: ann", "echo: bob"] and named.index.equals(frame.index)
    assert named.name == "chat"
    with pytest.raises(ArgumentError, match="no column 'nmae'; it has 'name', 'age'"):
        frame.ai.query("chat", "nmae")
    with pytest.raises(AifuncsError, match="Did you mean 'chat'"):
        frame.name.ai.query("chta")


def test_functions_of_your_own_and_usage_accounting(chat: FakeServer) -> None:
    from functions.test_tasks import URGENCY

    aifuncs.functions.define(URGENCY)
    messages = pd.Series(
        ["urgent: the site is down", "a normal question", "urgent: the site is down"], index=[3, 2, 1]
    )
    urgency = messages.ai.call("ai_urgency", endpoint="chat")
    assert urgency.tolist() == ["urgent", "normal", "urgent"] and urgency.index.equals(messages.index)
    assert chat.stats.rows == 2  # equal texts asked once (temperature 0), as in SQL
    con = aifuncs.connect()
    usage = con.sql("SELECT function, sum(rows) FROM aifuncs_usage GROUP BY ALL").fetchall()
    assert ("ai_urgency", 2) in usage  # the pandas call is in the usage log like any query
    con.close()
    with pytest.raises(ArgumentError, match="Unknown AI function 'ai_nothing'"):
        messages.ai.call("ai_nothing")


def test_budgets_stop_a_pandas_call(chat: FakeServer) -> None:
    values = pd.Series(range(1_000))
    with pytest.raises(BudgetExceeded, match="estimated at \\$1.0000"):
        values.ai.query("echo", max_cost_usd=0.5)  # 1,000 rows at $1 per 1,000: refused before sending
    assert chat.stats.rows == 0


def test_grouped_aggregates_and_sql_over_a_frame(chat: FakeServer) -> None:
    frame = pd.DataFrame({"topic": ["bug", "bill", "bug"], "body": ["crash", "refund", "freeze"]})
    summaries = frame.ai.agg("body", "What went wrong?", by="topic", endpoint="chat")
    assert summaries.to_dict() == {"bill": "summary of 1 items", "bug": "summary of 2 items"}
    assert summaries.index.name == "topic"
    result = frame.ai.sql("SELECT topic, ai_query('chat', body) AS reply FROM df ORDER BY body")
    assert result["reply"].tolist() == ["echo: crash", "echo: freeze", "echo: refund"]


def test_sql_results_convert_to_pandas_arrow_and_polars(chat: FakeServer) -> None:
    import polars as pl

    con = aifuncs.connect()
    relation = aifuncs.sql(con, "SELECT range AS id, ai_query('echo', range) AS y FROM range(5)")
    assert relation is not None
    table = relation.to_arrow_table()
    assert table.column("y").to_pylist() == [0, 2, 4, 6, 8]
    assert relation.df()["y"].tolist() == [0, 2, 4, 6, 8]
    assert relation.pl()["y"].to_list() == [0, 2, 4, 6, 8] and isinstance(relation.pl(), pl.DataFrame)
    con.close()


def test_fork_pool_workers_answer_and_account_for_their_requests() -> None:
    """A multiprocessing pool (fork, Linux's default) after the parent's own AI calls: the workers answer, and
    their usage rows are written before each call returns (a worker ends with os._exit: no atexit)."""
    from pathlib import Path

    from forking import run_forking

    tests_dir = Path(__file__).resolve().parents[1]
    done = run_forking(
        f"""
        import multiprocessing, sys
        sys.path.insert(0, {str(tests_dir)!r})
        import pandas as pd
        import aifuncs

        aifuncs.endpoints.create("doubler", kind="python", function="sample_models:doubled", returns="DOUBLE")

        def work(n):
            return float(pd.Series([float(i) for i in range(n)]).ai.query("doubler", cache=False).sum())

        print("parent", work(100))
        with multiprocessing.get_context("fork").Pool(2) as pool:
            print("workers", pool.map(work, [10, 20, 30, 40]))
        con = aifuncs.connect()
        print("usage rows", aifuncs.sql(con, "SELECT count(*) FROM aifuncs_usage").fetchall()[0][0])
        """
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[:3] == [
        "parent 9900.0",
        "workers [90.0, 380.0, 870.0, 1560.0]",
        "usage rows 5",
    ]


def _snake(name: str) -> str:
    return "".join("_" + c.lower() if c.isupper() else c for c in name)


def test_every_option_of_every_method_takes_its_sql_name_and_snake_case() -> None:
    from aifuncs.engines.pandas import _call_expression
    from aifuncs.functions import all_specs, get_spec

    checked = 0
    for name in all_specs():
        spec = get_spec(name)
        assert spec is not None
        if spec.kind == "table":
            continue
        columns = [p for p in spec.params if p.kind == "column"] if name != "ai_query" else spec.params[:2]
        values = [sqlglot_column(f"c{i}") for i in range(len(columns))]
        for param in spec.params:
            if param in columns:
                continue
            spellings = {param.name, _snake(param.name)}
            written = {_call_expression(spec, values, {s: "x"}).sql("duckdb") for s in spellings}
            assert len(written) == 1 and f"{param.name} => 'x'" in written.pop(), (name, spellings)
            checked += 1
    assert checked >= 20


def sqlglot_column(name: str):  # type: ignore[no-untyped-def]
    from sqlglot import exp

    return exp.column(name)


def test_query_takes_the_sql_names_of_its_options(chat: FakeServer) -> None:
    names = pd.Series(["ann", "bob"], index=[3, 4])
    snake = names.ai.query(
        "chat", return_type="INT", fail_on_error=False, model_parameters={"temperature": 0}
    )
    sql_names = names.ai.query(
        "chat", returnType="INT", failOnError=False, modelParameters={"temperature": 0}
    )
    assert snake.tolist() == sql_names.tolist() and "errorMessage" in sql_names.tolist()[0]
    framed = pd.DataFrame({"name": ["ann"]}).ai.query("chat", responseFormat={"type": "json_object"})
    assert framed.tolist()[0].startswith("{")
    assert aifuncs.pandas.query("echo", pd.Series([2]), returnType="DOUBLE").tolist() == [4.0]
    with pytest.raises(ArgumentError, match="'failOnError' and 'fail_on_error' are the same option"):
        names.ai.query("chat", failOnError=False, fail_on_error=True)
    with pytest.raises(ArgumentError, match="no option 'failOnErorr'.*failOnError \\(fail_on_error\\)"):
        names.ai.query("chat", failOnErorr=False)
