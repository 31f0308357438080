"""The `serving` kind against the real MLflow scoring server (`mlflow models serve`)."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator

import duckdb
import pytest
from conftest import FEATURES, MlflowModels
from servers import free_port, running

import aifuncs


@pytest.fixture(scope="module")
def scoring_server(mlflow_models: MlflowModels, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    # The scoring server execs `uvicorn`: put this interpreter's scripts first on PATH.
    path = os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")])
    env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow_models.tracking_uri, "PATH": path}
    command = [sys.executable, "-m", "mlflow", "models", "serve", "-m", mlflow_models.sklearn_uri,
               "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port), "--workers", "1"]  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    with running(command, url + "/ping", tmp_path_factory.mktemp("serve") / "serve.log", env):
        yield url + "/invocations"


def test_serving_endpoint_matches_the_local_model(
    con: duckdb.DuckDBPyConnection, mlflow_models: MlflowModels, scoring_server: str
) -> None:
    from sklearn.datasets import load_wine

    wines = load_wine(as_frame=True).frame[FEATURES].astype("float64")
    con.register("wine_frame", wines)
    con.execute("CREATE TABLE wines AS SELECT row_number() OVER () AS id, * FROM wine_frame")
    aifuncs.endpoints.create(
        "served", kind="serving", url=scoring_server, returns="BIGINT", max_batch_rows=50
    )
    aifuncs.endpoints.create(
        "local", kind="mlflow", model_uri=mlflow_models.sklearn_uri, tracking_uri=mlflow_models.tracking_uri
    )
    request = f"struct_pack({', '.join(FEATURES)})"
    rows = aifuncs.sql(
        con,
        f"SELECT id, ai_query('served', {request}) AS remote, ai_query('local', {request}) AS here"
        " FROM wines ORDER BY id LIMIT 1000",  # LIMIT: both stream, one vector
    ).fetchall()
    assert len(rows) == len(wines)
    assert all(remote == here for _, remote, here in rows)
    assert {here for _, _, here in rows} == {0, 1, 2}
    usage = con.sql("SELECT count(*), sum(rows) FROM aifuncs_usage WHERE endpoint = 'served'").fetchall()
    assert usage == [(4, len(wines))]  # 178 rows, 50 per request
