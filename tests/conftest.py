from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from pg import backend, pg_cluster, pg_url  # noqa: F401  (fixtures: a test on both backends)

FEATURES = ["alcohol", "malic_acid", "flavanoids", "color_intensity", "proline"]


@pytest.fixture(autouse=True)
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Each test gets its own AIFUNCS_HOME: its own catalog, nothing shared with the user's."""
    path = tmp_path / "aifuncs-home"
    monkeypatch.setenv("AIFUNCS_HOME", str(path))
    # MLflow exports its URIs into the environment; never let one test's store leak into another.
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    return path


@pytest.fixture
def con(home: Path) -> Iterator[object]:
    import aifuncs

    connection = aifuncs.connect()
    yield connection
    connection.close()


@dataclass(frozen=True)
class MlflowModels:
    tracking_uri: str
    sklearn_uri: str  # models:/wine/1: scaler + logistic regression on scikit-learn's wine data
    custom_uri: str  # models:/sum-and-label/1: a PythonModel returning (total DOUBLE, label VARCHAR)


@pytest.fixture(scope="session")
def mlflow_models(tmp_path_factory: pytest.TempPathFactory) -> MlflowModels:
    """Real MLflow models, logged and registered once per session in a SQLite store in a temp dir."""
    import mlflow
    import pandas as pd
    from mlflow.models import infer_signature
    from sample_models import SumAndLabel
    from sklearn.datasets import load_wine
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    store = tmp_path_factory.mktemp("mlflow")
    tracking_uri = f"sqlite:///{store / 'mlflow.db'}"
    previous = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    try:
        wine = load_wine(as_frame=True).frame
        x = wine[FEATURES].astype("float64")
        model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)).fit(x, wine["target"])
        with mlflow.start_run():
            mlflow.sklearn.log_model(
                model,
                name="model",
                signature=infer_signature(x, model.predict(x)),
                registered_model_name="wine",
            )
            example = pd.DataFrame({"x": [1.0, 20.0], "y": [2.0, 3.0]})
            mlflow.pyfunc.log_model(
                name="custom",
                python_model=SumAndLabel(),
                signature=infer_signature(example, SumAndLabel().predict(None, example)),
                registered_model_name="sum-and-label",
            )
        mlflow.MlflowClient().set_registered_model_alias("wine", "champion", "1")
    finally:
        mlflow.set_tracking_uri(previous or "")
    return MlflowModels(tracking_uri, "models:/wine/1", "models:/sum-and-label/1")


@pytest.fixture(scope="session")
def spark() -> Iterator[object]:
    """One local Spark session (2 cores) for every Spark test: it takes ~8 s to start. Its Python workers
    import the tests' sample models, as the driver does."""
    tests = str(Path(__file__).parent)
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [tests, os.environ.get("PYTHONPATH")]))
    import aifuncs.spark

    session = aifuncs.spark.local_session(2)
    yield session
    session.stop()
