"""Benchmark: 1,000,000 rows scored by an MLflow scikit-learn model, ai_query in DuckDB vs one direct predict.

    python tests/bench/bench_local_model.py [--rows N] [--threads N]

Both sides run in this one process on the same data and the same loaded pyfunc model; the direct side
gets its pandas frame before the clock starts. Target: the SQL path reaches at least 0.8x the direct call.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    args = parser.parse_args()
    home = tempfile.mkdtemp(prefix="aifuncs-bench-")
    os.environ["AIFUNCS_HOME"] = home

    import mlflow
    from mlflow.models import infer_signature
    from sklearn.datasets import load_wine
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    import aifuncs
    from aifuncs.providers.mlflow import default_tracking_uri

    features = ["alcohol", "malic_acid", "flavanoids", "color_intensity", "proline"]
    wine = load_wine(as_frame=True).frame
    x = wine[features].astype("float64")
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)).fit(x, wine["target"])
    mlflow.set_tracking_uri(default_tracking_uri())
    with mlflow.start_run():
        info = mlflow.sklearn.log_model(
            model, name="model", signature=infer_signature(x, model.predict(x)), registered_model_name="wine"
        )
    aifuncs.endpoints.create("wine", kind="mlflow", model_uri=f"models:/wine/{info.registered_model_version}")

    con = aifuncs.connect(threads=args.threads)
    rng = np.random.default_rng(7)
    sample = x.sample(args.rows, replace=True, random_state=7).reset_index(drop=True)
    sample = sample * rng.normal(1.0, 0.03, size=sample.shape)
    con.register("sample_frame", sample)
    con.execute("CREATE TABLE wines AS SELECT row_number() OVER () AS id, * FROM sample_frame")
    con.unregister("sample_frame")

    pyfunc = aifuncs.engines.duckdb.default_runtime().provider(aifuncs.endpoints.get("wine")).model()
    frame = con.sql(f"SELECT {', '.join(features)} FROM wines ORDER BY id").df()

    query = f"CREATE OR REPLACE TABLE scored AS SELECT id, ai_query('wine', struct_pack({', '.join(features)})) AS label FROM wines"
    aifuncs.sql(
        con, query.replace("FROM wines", "FROM wines LIMIT 10000")
    )  # warm-up: load the model, register the UDF

    best_direct = best_sql = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        direct = pyfunc.predict(frame)
        best_direct = min(best_direct, time.perf_counter() - start)
        start = time.perf_counter()
        aifuncs.sql(con, query)
        best_sql = min(best_sql, time.perf_counter() - start)

    scored = con.sql("SELECT label FROM scored ORDER BY id").fetchnumpy()["label"]
    assert len(scored) == args.rows and (scored == np.asarray(direct)).all(), "SQL and direct answers differ"
    direct_rate, sql_rate = args.rows / best_direct, args.rows / best_sql
    print(f"rows:                {args.rows:,} (DuckDB threads={args.threads}, best of 3)")
    print(f"direct pyfunc.predict: {best_direct:7.3f} s  {direct_rate:12,.0f} rows/s")
    print(f"ai_query in DuckDB:    {best_sql:7.3f} s  {sql_rate:12,.0f} rows/s")
    print(f"ratio SQL / direct:    {sql_rate / direct_rate:7.2f}x   (target >= 0.80x)")


if __name__ == "__main__":
    main()
