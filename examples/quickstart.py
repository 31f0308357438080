"""Offline quickstart: train a wine classifier, register it in MLflow, query it from DuckDB SQL, then
run task functions (sentiment, classification, similarity) on the built-in local models.

Everything stays on this machine: the data set ships with scikit-learn, the MLflow registry is a
SQLite file under AIFUNCS_HOME (default ./.aifuncs-demo), and no network or key is needed.

    python examples/quickstart.py            # or: make demo
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
os.environ.setdefault("AIFUNCS_HOME", str(HERE.parent / ".aifuncs-demo"))

import mlflow  # noqa: E402
from mlflow.models import infer_signature  # noqa: E402
from sklearn.datasets import load_wine  # noqa: E402
from sklearn.linear_model import LogisticRegression  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402

import aifuncs  # noqa: E402
from aifuncs.engines.duckdb import sql_each  # noqa: E402
from aifuncs.providers.mlflow import default_tracking_uri  # noqa: E402

FEATURES = ["alcohol", "malic_acid", "flavanoids", "color_intensity", "proline"]
MODEL = "wine-classifier"


def train_and_register() -> str:
    """Train on scikit-learn's wine data, log and register the model; return its models:/ URI."""
    wine = load_wine(as_frame=True).frame
    features = wine[FEATURES].astype("float64")
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)).fit(features, wine["target"])
    mlflow.set_tracking_uri(default_tracking_uri())
    mlflow.set_registry_uri(default_tracking_uri())
    mlflow.set_experiment("aifuncs-quickstart")
    with mlflow.start_run():
        info = mlflow.sklearn.log_model(
            model,
            name="model",
            signature=infer_signature(features, model.predict(features)),
            registered_model_name=MODEL,
        )
    return f"models:/{MODEL}/{info.registered_model_version}"


def register_endpoint(model_uri: str) -> None:
    if MODEL in aifuncs.endpoints.default_catalog().names():
        aifuncs.endpoints.update(MODEL, model_uri=model_uri)
    else:
        aifuncs.endpoints.create(MODEL, kind="mlflow", model_uri=model_uri, description="Wine cultivar, 0-2")


def main() -> int:
    uri = train_and_register()
    register_endpoint(uri)
    print(f"Registered {uri} as endpoint {MODEL!r} (AIFUNCS_HOME={os.environ['AIFUNCS_HOME']})\n")

    con = aifuncs.connect()
    wines = load_wine(as_frame=True).frame.rename(columns={"target": "cultivar"}).reset_index(names="id")
    con.register("wine_frame", wines)
    con.execute("CREATE TABLE wines AS SELECT * FROM wine_frame")

    script = (HERE / "quickstart.sql").read_text()
    for statement, relation in sql_each(con, script):
        if relation is not None:
            numbered = [line for line in statement.splitlines() if line[:4].strip("- ").rstrip(".").isdigit()]
            print(numbered[0] if numbered else statement.splitlines()[0])
            relation.show(max_width=140)
            print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
