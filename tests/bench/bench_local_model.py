"""Benchmark: 1,000,000 rows scored by MLflow scikit-learn models, ai_query in DuckDB vs one direct predict.

    python tests/bench/bench_local_model.py [--rows N] [--threads N] [--models logistic,forest] [--repeats N]

Both sides run in this one process on the same data and the same loaded pyfunc model; the direct side
gets its pandas frame before the clock starts, the SQL side reads the table and writes a new one
(`CREATE TABLE scored AS SELECT id, ai_query(...) FROM wines`). Target: the SQL path reaches at least
0.8x the direct call. Two models show where the fixed costs of the SQL path (reading, converting and
writing 1M rows) matter: a cheap logistic regression and a 100-tree random forest.
"""

from __future__ import annotations

import argparse
import gc
import os
import tempfile
import time
from typing import Any

import numpy as np

FEATURES = ["alcohol", "malic_acid", "flavanoids", "color_intensity", "proline"]


def build_model(kind: str, x: Any, y: Any) -> Any:
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if kind == "logistic":
        return make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)).fit(x, y)
    return RandomForestClassifier(n_estimators=100, max_depth=8, random_state=7).fit(x, y)


def register(kind: str, model: Any, x: Any) -> None:
    import mlflow
    from mlflow.models import infer_signature

    import aifuncs

    with mlflow.start_run():
        info = mlflow.sklearn.log_model(
            model,
            name="model",
            signature=infer_signature(x, model.predict(x)),
            registered_model_name=f"wine-{kind}",
            # MLflow 3 saves with skops, which trusts only the types named here to load.
            skops_trusted_types=[
                "sklearn.ensemble._forest.RandomForestClassifier",
                "sklearn.tree._classes.DecisionTreeClassifier",
                "sklearn.tree._tree.Tree",
            ]
            if kind == "forest"
            else None,
        )
    aifuncs.endpoints.create(
        f"wine-{kind}", kind="mlflow", model_uri=f"models:/wine-{kind}/{info.registered_model_version}"
    )


def create_wines(con: Any, x: Any, rows: int) -> None:
    """Table `wines`: `rows` wine feature rows drawn from the dataset with 3% noise, and an `id`."""
    rng = np.random.default_rng(7)
    sample = x.sample(rows, replace=True, random_state=7).reset_index(drop=True)
    sample = sample * rng.normal(1.0, 0.03, size=sample.shape)
    con.register("sample_frame", sample)
    con.execute("CREATE TABLE wines AS SELECT row_number() OVER () AS id, * FROM sample_frame")
    con.unregister("sample_frame")


def settle() -> None:
    """Let the previous side's leftovers finish before the clock starts: OpenBLAS workers spin for a while
    after a multi-threaded call (measured: the SQL path took ~90 ms right after a direct predict, ~70 ms
    after a pause), and the allocator may still be returning memory."""
    gc.collect()
    time.sleep(0.2)


def measure(con: Any, kind: str, frame: Any, rows: int, repeats: int) -> tuple[float, float]:
    import aifuncs

    endpoint = aifuncs.endpoints.get(f"wine-{kind}")
    pyfunc = aifuncs.runtime.default_runtime().provider(endpoint).model()
    query = (
        "CREATE OR REPLACE TABLE scored AS SELECT id,"
        f" ai_query('wine-{kind}', struct_pack({', '.join(FEATURES)})) AS label FROM wines"
    )
    aifuncs.sql(con, query.replace("FROM wines", "FROM wines WHERE id <= 10000"))  # warm-up: load the model
    best_direct = best_sql = float("inf")
    for _ in range(repeats):
        settle()
        start = time.perf_counter()
        direct = pyfunc.predict(frame)
        best_direct = min(best_direct, time.perf_counter() - start)
        settle()
        start = time.perf_counter()
        aifuncs.sql(con, query)
        best_sql = min(best_sql, time.perf_counter() - start)
    scored = con.sql("SELECT label FROM scored ORDER BY id").fetchnumpy()["label"]
    assert len(scored) == rows and (scored == np.asarray(direct)).all(), "SQL and direct answers differ"
    return best_direct, best_sql


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--models", default="logistic,forest")
    parser.add_argument(
        "--repeats", type=int, default=15, help="runs per side for the logistic model (best kept)"
    )
    args = parser.parse_args()
    os.environ["AIFUNCS_HOME"] = tempfile.mkdtemp(prefix="aifuncs-bench-")

    import mlflow
    from sklearn.datasets import load_wine

    import aifuncs
    from aifuncs.providers.mlflow import default_tracking_uri

    wine = load_wine(as_frame=True).frame
    x = wine[FEATURES].astype("float64")
    mlflow.set_tracking_uri(default_tracking_uri())
    kinds = [k.strip() for k in args.models.split(",") if k.strip()]
    for kind in kinds:
        register(kind, build_model(kind, x, wine["target"]), x)

    con = aifuncs.connect(threads=args.threads)
    create_wines(con, x, args.rows)
    frame = con.sql(f"SELECT {', '.join(FEATURES)} FROM wines ORDER BY id").df()

    print(f"rows: {args.rows:,}   DuckDB threads: {args.threads}   CPUs: {os.cpu_count()}")
    print(f"{'model':10} {'direct predict':>22} {'ai_query in DuckDB':>24} {'SQL/direct':>11}")
    for kind in kinds:
        repeats = args.repeats if kind == "logistic" else 3
        direct, sql = measure(con, kind, frame, args.rows, repeats)
        print(
            f"{kind:10} {direct:7.3f} s {args.rows / direct:10,.0f}/s"
            f" {sql:9.3f} s {args.rows / sql:10,.0f}/s {direct / sql:9.2f}x   (target >= 0.80x, best of {repeats})"
        )


if __name__ == "__main__":
    main()
