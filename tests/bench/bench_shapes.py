"""Benchmark: every query shape an analyst writes around ai_query, side by side with the plain CTAS.

    python tests/bench/bench_shapes.py [--rows N] [--remote-rows N] [--repeats N] [--only local|remote]
                                       [--shapes WORD ...]

Two parts in one run:

- in-process: an MLflow scikit-learn logistic regression on 1,000,000 rows (wine features, as in
  bench_local_model.py); each shape's rows scored per second against the plain `CREATE TABLE o AS SELECT id,
  ai_query(...) FROM t` (target: every shape at least 0.8x).
- remote: a scoring server in its own process (50 ms per request, 64 rows per request, 16 requests in
  flight); each shape's rows per second against the ideal in-flight throughput, 16 x 64 / 0.05 s (target:
  at least 0.8x). Each shape asks a new endpoint, so no answer is reused from an earlier one, and starts
  from an empty answer store: kept answers accumulating over the run (2M after 52 runs) slowed its commits,
  and with them the later shapes, by up to a quarter (docs/performance.md).

Every shape's answers are checked against the plain CTAS's (or the server's known rule), and the `LIMIT`
shape reports how many rows it sent (it must stay near its limit).
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: the fake server

FEATURES = ["alcohol", "malic_acid", "flavanoids", "color_intensity", "proline"]
DELAY_S = 0.05
ROWS_PER_REQUEST = 64
IN_FLIGHT = 16

# (name, SQL with {ai} for the call, rows it scores as a share of the table). `t` has `id`, the features and
# `grp`; `u` has `id` and `weight` (as many rows as `t`); `g` has `grp` and `region` (10 rows, a dimension).
SHAPES: list[tuple[str, str, float]] = [
    ("plain CTAS", "CREATE OR REPLACE TABLE o AS SELECT id, {ai} AS p FROM t", 1.0),
    ("aggregate over subquery", "SELECT count(*), sum(p) FROM (SELECT {ai} AS p FROM t)", 1.0),
    ("GROUP BY subquery", "SELECT p, count(*) FROM (SELECT {ai} AS p FROM t) GROUP BY p ORDER BY p", 1.0),
    ("GROUP BY alias", "SELECT {ai} AS p, count(*) FROM t GROUP BY p ORDER BY p", 1.0),
    ("WHERE on the answer", "SELECT count(*) FROM t WHERE {ai} = 1", 1.0),
    ("WHERE, half the rows", "SELECT avg(p) FROM (SELECT {ai} AS p FROM t WHERE id % 2 = 0)", 0.5),
    (
        "CTE",
        "WITH s AS (SELECT id, grp, {ai} AS p FROM t) SELECT grp, avg(p) FROM s GROUP BY grp ORDER BY grp",
        1.0,
    ),
    ("ORDER BY answer LIMIT", "SELECT id, {ai} AS p FROM t ORDER BY p DESC, id LIMIT 10", 1.0),
    (
        "window over answers",
        "SELECT max(r) FROM (SELECT rank() OVER (PARTITION BY {ai} ORDER BY id) AS r FROM t)",
        1.0,
    ),
    (
        "join after scoring",
        "SELECT g.region, avg(s.p) FROM (SELECT grp, {ai} AS p FROM t) s JOIN g ON s.grp = g.grp"
        " GROUP BY g.region ORDER BY 1",
        1.0,
    ),
    (
        "join before scoring",
        "SELECT g.region, count(*) FROM t JOIN g ON t.grp = g.grp WHERE {ai_joined} = 1 GROUP BY g.region"
        " ORDER BY 1",
        1.0,
    ),
    (
        "self-join before scoring",
        "SELECT count(*) FROM (SELECT {ai_joined} AS p FROM t JOIN u ON t.id = u.id) WHERE p = 1",
        1.0,
    ),
    ("INSERT ... SELECT", "INSERT INTO o SELECT id, {ai} FROM t", 1.0),
]
LIMIT_SHAPE = "SELECT id, {ai} AS p FROM t LIMIT 1000"


def settle() -> None:
    gc.collect()
    time.sleep(0.2)


def timed(
    run: Callable[[], Any], repeats: int, before: Callable[[], Any] = lambda: None
) -> tuple[float, Any]:
    best, result = float("inf"), None
    for _ in range(repeats):
        before()
        settle()
        start = time.perf_counter()
        result = run()
        best = min(best, time.perf_counter() - start)
    return best, result


def fetch(con: Any, query: str) -> Any:
    import aifuncs

    relation = aifuncs.sql(con, query)
    return None if relation is None else relation.fetchall()


def build_tables(con: Any, rows: int) -> None:
    import numpy as np
    from sklearn.datasets import load_wine

    wine = load_wine(as_frame=True).frame
    x = wine[FEATURES].astype("float64")
    rng = np.random.default_rng(7)
    sample = x.sample(rows, replace=True, random_state=7).reset_index(drop=True)
    sample = sample * rng.normal(1.0, 0.03, size=sample.shape)
    con.register("sample_frame", sample)
    con.execute("CREATE OR REPLACE TABLE t AS SELECT row_number() OVER () AS id, *, (row_number() OVER ()) % 10"
                " AS grp FROM sample_frame")  # fmt: skip
    con.unregister("sample_frame")
    con.execute("CREATE OR REPLACE TABLE u AS SELECT id, (id % 3)::DOUBLE AS weight FROM t")
    con.execute(
        "CREATE OR REPLACE TABLE g AS SELECT i AS grp, 'region ' || (i % 3) AS region FROM range(10) r(i)"
    )
    con.execute("CREATE OR REPLACE TABLE o (id BIGINT, p BIGINT)")


def prepare(con: Any, query: str) -> None:
    """Untimed: an INSERT shape starts from a new, empty table each run (deleted rows would pile up)."""
    if query.startswith("INSERT INTO o"):
        con.execute("CREATE OR REPLACE TABLE o (id BIGINT, p BIGINT)")


def local_part(rows: int, repeats: int) -> list[float]:
    import mlflow
    from mlflow.models import infer_signature
    from sklearn.datasets import load_wine
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    import aifuncs
    from aifuncs.providers.mlflow import default_tracking_uri

    wine = load_wine(as_frame=True).frame
    x = wine[FEATURES].astype("float64")
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)).fit(x, wine["target"])
    mlflow.set_tracking_uri(default_tracking_uri())
    with mlflow.start_run():
        info = mlflow.sklearn.log_model(
            model, name="model", signature=infer_signature(x, model.predict(x)), registered_model_name="wine"
        )
    aifuncs.endpoints.create("wine", kind="mlflow", model_uri=f"models:/wine/{info.registered_model_version}")
    con = aifuncs.connect()
    build_tables(con, rows)
    call = f"ai_query('wine', struct_pack({', '.join(FEATURES)}))"
    joined = f"ai_query('wine', struct_pack({', '.join('t.' + f for f in FEATURES)}))"
    fetch(con, "SELECT count(*) FROM (SELECT " + call + " AS p FROM t WHERE id <= 1000)")  # load the model

    # The same statements over answers already in a column: the SQL work each shape does anyway (a sort, a
    # window, a join), printed beside it so what the AI call adds can be read apart.
    aifuncs.sql(con, "CREATE OR REPLACE TABLE answered AS SELECT *, " + call + " AS p0 FROM t")

    print(f"in-process: MLflow logistic regression, {rows:,} rows, best of {repeats}")
    print(f"{'shape':26} {'seconds':>8} {'rows/s':>12} {'vs CTAS':>8} {'SQL alone':>10}  path")
    base_rate = 0.0
    ratios = []
    expected: dict[int, int] | None = None
    for name, template, share in SHAPES:
        query = template.format(ai=call, ai_joined=joined)
        paths = ", ".join(c.path for c in aifuncs.explain(con, query).calls)
        seconds, _ = timed(lambda q=query: fetch(con, q), repeats, lambda q=query: prepare(con, q))
        plain = template.format(ai="p0", ai_joined="t.p0").replace(" FROM t", " FROM answered t")
        alone, _ = timed(lambda q=plain: con.execute(q).fetchall(), repeats, lambda q=plain: prepare(con, q))
        rate = rows * share / seconds
        if name == "plain CTAS":
            base_rate = rate
            expected = dict(con.sql("SELECT p, count(*) FROM o GROUP BY p").fetchall())
        else:
            ratios.append(rate / base_rate)
        print(f"{name:26} {seconds:8.3f} {rate:12,.0f} {rate / base_rate:7.2f}x {alone:9.3f}s  {paths}")
    check = dict(fetch(con, f"SELECT p, count(*) FROM (SELECT {call} AS p FROM t) GROUP BY p"))
    assert check == expected, f"answers differ from the plain CTAS: {check} vs {expected}"
    print(f"lowest ratio to the plain CTAS: {min(ratios):.2f}x  (target >= 0.80x)")
    con.close()
    return ratios


def remote_part(rows: int, repeats: int) -> list[float]:
    from servers import FakeServer

    import aifuncs

    ideal = IN_FLIGHT * ROWS_PER_REQUEST / DELAY_S
    con = aifuncs.connect()
    con.execute(f"CREATE OR REPLACE TABLE t AS SELECT i AS id, i % 10 AS grp FROM range(1, {rows + 1}) r(i)")
    con.execute("CREATE OR REPLACE TABLE u AS SELECT id, (id % 3)::DOUBLE AS weight FROM t")
    con.execute(
        "CREATE OR REPLACE TABLE g AS SELECT i AS grp, 'region ' || (i % 3) AS region FROM range(10) r(i)"
    )
    con.execute("CREATE OR REPLACE TABLE o (id BIGINT, p BIGINT)")
    print()
    print(f"remote: {DELAY_S * 1000:.0f} ms per request, {ROWS_PER_REQUEST} rows per request, {IN_FLIGHT} in flight,"
          f" {rows:,} rows, best of {repeats}; ideal {ideal:,.0f} rows/s")  # fmt: skip
    print(f"{'shape':26} {'seconds':>8} {'rows/s':>12} {'vs ideal':>9}  path")
    ratios = []
    counter = iter(range(1_000_000))
    with FakeServer(delay_s=DELAY_S) as server:

        def endpoint() -> str:
            name = f"scorer-{next(counter)}"  # a new endpoint each run: nothing answered from the cache
            aifuncs.endpoints.create(name, kind="serving", url=server.url + "/invocations", returns="BIGINT",
                                     max_batch_rows=ROWS_PER_REQUEST, max_concurrency=IN_FLIGHT)  # fmt: skip
            return name

        fetch(con, f"SELECT ai_query('{endpoint()}', id) FROM t WHERE id <= 10")  # one-time costs
        for name, template, share in SHAPES:
            best = float("inf")
            for _ in range(repeats):
                ep = endpoint()
                query = template.format(ai=f"ai_query('{ep}', id)", ai_joined=f"ai_query('{ep}', t.id)")
                query = query.replace("= 1", "= 2")  # the server doubles: 2 is an answer it gives
                paths = ", ".join(c.path for c in aifuncs.explain(con, query).calls)
                prepare(con, query)
                aifuncs.cache.clear()  # each run starts from an empty answer store (see the module's text)
                settle()
                start = time.perf_counter()
                fetch(con, query)
                best = min(best, time.perf_counter() - start)
            rate = rows * share / best
            ratios.append(rate / ideal)
            print(f"{name:26} {best:8.3f} {rate:12,.0f} {rate / ideal:8.2f}x  {paths}")
        sent_before = server.stats.rows
        fetch(con, LIMIT_SHAPE.format(ai=f"ai_query('{endpoint()}', id)"))
        sent = server.stats.rows - sent_before
        total = dict(fetch(con, "SELECT p = 2 * id, count(*) FROM o GROUP BY ALL"))
        assert total == {True: rows}, f"wrong remote answers: {total}"
    print(f"LIMIT 1000: rows sent {sent:,}  (must stay near 1,000)")
    print(f"lowest ratio to the ideal: {min(ratios):.2f}x  (target >= 0.80x)")
    con.close()
    return ratios


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--remote-rows", type=int, default=40_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--only", choices=["local", "remote"])
    parser.add_argument("--shapes", nargs="+", help="only the shapes whose names contain one of these words")
    args = parser.parse_args()
    if args.shapes:  # the plain CTAS always runs: the in-process ratios are to it
        SHAPES[1:] = [s for s in SHAPES[1:] if any(w.lower() in s[0].lower() for w in args.shapes)]
    os.environ["AIFUNCS_HOME"] = tempfile.mkdtemp(prefix="aifuncs-bench-")
    print(f"CPUs: {os.cpu_count()}")
    if args.only != "remote":
        local_part(args.rows, args.repeats)
    if args.only != "local":
        remote_part(args.remote_rows, max(1, args.repeats - 1))


if __name__ == "__main__":
    main()
