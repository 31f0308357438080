from __future__ import annotations

import duckdb
import mlflow
import numpy as np
import pytest
from conftest import FEATURES, MlflowModels
from sklearn.datasets import load_wine

import aifuncs
from aifuncs.errors import RequestMismatch
from aifuncs.providers import mlflow as mlflow_provider

REQUEST = "struct_pack(" + ", ".join(FEATURES) + ")"


@pytest.fixture
def wines(con):  # type: ignore[no-untyped-def]
    frame = load_wine(as_frame=True).frame.rename(columns={"target": "cultivar"}).reset_index(names="id")
    con.register("wine_frame", frame)
    con.execute("CREATE TABLE wines AS SELECT * FROM wine_frame")
    return frame


def test_sklearn_model_scores_like_a_direct_predict(con, wines, mlflow_models: MlflowModels) -> None:  # type: ignore[no-untyped-def]
    aifuncs.endpoints.create(
        "wine", kind="mlflow", model_uri=mlflow_models.sklearn_uri, tracking_uri=mlflow_models.tracking_uri
    )
    rel = aifuncs.sql(con, f"SELECT id, ai_query('wine', {REQUEST}) AS label FROM wines ORDER BY id")
    assert rel.types[1] == "BIGINT"  # from the model's signature
    labels = np.array([r[1] for r in rel.fetchall()])
    mlflow.set_tracking_uri(mlflow_models.tracking_uri)
    direct = mlflow.pyfunc.load_model(mlflow_models.sklearn_uri).predict(wines[FEATURES].astype("float64"))
    assert (labels == direct).all()
    assert (labels == wines["cultivar"]).mean() > 0.9


def test_alias_uris_and_the_default_store(con, wines, mlflow_models: MlflowModels, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_models.tracking_uri)
    aifuncs.endpoints.create("champion", kind="mlflow", model_uri="models:/wine@champion")
    rows = aifuncs.sql(
        con, f"SELECT count(*) FROM wines WHERE ai_query('champion', {REQUEST}) = cultivar"
    ).fetchall()
    assert rows[0][0] > 160


def test_custom_model_with_several_outputs_returns_a_struct(con, mlflow_models: MlflowModels) -> None:  # type: ignore[no-untyped-def]
    aifuncs.endpoints.create(
        "custom", kind="mlflow", model_uri=mlflow_models.custom_uri, tracking_uri=mlflow_models.tracking_uri
    )
    rel = aifuncs.sql(
        con, "SELECT ai_query('custom', struct_pack(x := i::DOUBLE, y := 5.0)) AS r FROM range(3, 8, 3) t(i)"
    )
    assert str(rel.types[0]) == 'STRUCT(total DOUBLE, "label" VARCHAR)'  # label is a keyword
    assert rel.fetchall() == [({"total": 8.0, "label": "small"},), ({"total": 11.0, "label": "big"},)]
    fields = aifuncs.sql(con, "SELECT r.label FROM (SELECT ai_query('custom', {'x': 1.0, 'y': 2.0}) AS r)")
    assert fields.fetchall() == [("small",)]


def test_model_failures_stay_per_row(con, mlflow_models: MlflowModels) -> None:  # type: ignore[no-untyped-def]
    aifuncs.endpoints.create(
        "custom", kind="mlflow", model_uri=mlflow_models.custom_uri, tracking_uri=mlflow_models.tracking_uri
    )
    query = (
        "SELECT i, ai_query('custom', struct_pack(x := i::DOUBLE, y := 1.0), failOnError => false) AS r"
        " FROM range(-1, 3) t(i) ORDER BY i"
    )
    rows = aifuncs.sql(con, query).fetchall()
    assert rows[0][1] == {"result": None, "errorMessage": "ValueError: x must not be negative"}
    assert [r[1]["result"]["total"] for r in rows[1:]] == [1.0, 2.0, 3.0]
    with pytest.raises(
        duckdb.Error, match=r"Endpoint 'custom' failed on a batch of 4 rows: .*x must not be negative"
    ):
        aifuncs.sql(con, query.replace(", failOnError => false", "")).fetchall()


def test_request_fields_are_checked_before_any_call(con, mlflow_models: MlflowModels) -> None:  # type: ignore[no-untyped-def]
    aifuncs.endpoints.create(
        "custom", kind="mlflow", model_uri=mlflow_models.custom_uri, tracking_uri=mlflow_models.tracking_uri
    )
    with pytest.raises(
        RequestMismatch,
        match=r"expects fields \(x DOUBLE, y DOUBLE\); the request has \(x, z\): "
        r"missing y; not inputs of the model: z",
    ):
        aifuncs.sql(con, "SELECT ai_query('custom', struct_pack(x := 1.0, z := 2.0))")
    with pytest.raises(RequestMismatch, match="expects a STRUCT with fields"):
        aifuncs.sql(con, "SELECT ai_query('custom', 1.0)")


def test_models_load_once_per_process(con, mlflow_models: MlflowModels) -> None:  # type: ignore[no-untyped-def]
    aifuncs.endpoints.create(
        "custom", kind="mlflow", model_uri=mlflow_models.custom_uri, tracking_uri=mlflow_models.tracking_uri
    )
    mlflow_provider._models.clear()
    for _ in range(3):
        aifuncs.sql(con, "SELECT ai_query('custom', struct_pack(x := 1.0, y := 2.0))").fetchall()
    assert list(mlflow_provider._models) == [(mlflow_models.custom_uri, mlflow_models.tracking_uri)]


def test_a_missing_model_is_a_clear_error(con, mlflow_models: MlflowModels) -> None:  # type: ignore[no-untyped-def]
    aifuncs.endpoints.create(
        "gone", kind="mlflow", model_uri="models:/no-such-model/1", tracking_uri=mlflow_models.tracking_uri
    )
    with pytest.raises(
        aifuncs.AifuncsError, match="Endpoint 'gone': cannot read the MLflow model 'models:/no-such-model/1'"
    ):
        aifuncs.sql(con, "SELECT ai_query('gone', 1.0)")


def test_cached_answers_are_keyed_by_the_logged_model(con, wines, mlflow_models: MlflowModels) -> None:  # type: ignore[no-untyped-def]
    import mlflow

    from aifuncs.runtime import default_runtime

    endpoint = aifuncs.endpoints.create(
        "wine",
        kind="mlflow",
        model_uri=mlflow_models.sklearn_uri,
        tracking_uri=mlflow_models.tracking_uri,
        cache=True,  # in-process models are not cached unless asked
    )
    mlflow.set_tracking_uri(mlflow_models.tracking_uri)
    uuid = mlflow.models.get_model_info(mlflow_models.sklearn_uri).model_uuid
    assert default_runtime().provider(endpoint).model_version() == uuid
    query = "SELECT ai_query('wine', struct_pack(alcohol, malic_acid, flavanoids, color_intensity, proline)) FROM wines"
    first = aifuncs.sql(con, query).fetchall()
    assert aifuncs.cache.stats().endpoints == {"wine": len(set(map(tuple, wines[FEATURES].to_numpy())))}
    assert aifuncs.sql(con, query).fetchall() == first


def test_requests_of_the_signatures_types_skip_pyfunc_enforcement_with_the_same_answers(  # type: ignore[no-untyped-def]
    con, wines, mlflow_models: MlflowModels, monkeypatch
) -> None:
    """A scikit-learn model gets requests already of its signature's types as MLflow's schema enforcement would
    hand them (enforcement costs each bulk call ~4 ms of GIL-bound pandas work); other requests go through
    the pyfunc's own predict."""
    aifuncs.endpoints.create(
        "wine", kind="mlflow", model_uri=mlflow_models.sklearn_uri, tracking_uri=mlflow_models.tracking_uri
    )
    pyfunc = aifuncs.runtime.default_runtime().provider(aifuncs.endpoints.get("wine")).model()
    through_pyfunc: list[int] = []
    predict = pyfunc.predict
    monkeypatch.setattr(
        pyfunc, "predict", lambda data, params=None: through_pyfunc.append(len(data)) or predict(data, params)
    )
    mlflow.set_tracking_uri(mlflow_models.tracking_uri)
    frame = wines[FEATURES].astype("float64")
    expected = list(mlflow.pyfunc.load_model(mlflow_models.sklearn_uri).predict(frame))

    backwards = "struct_pack(" + ", ".join(reversed(FEATURES)) + ")"  # not in the signature's order
    rows = aifuncs.sql(con, f"SELECT ai_query('wine', {backwards}) FROM wines ORDER BY id").fetchall()
    assert [r[0] for r in rows] == expected
    assert through_pyfunc == []

    as_float32 = REQUEST.replace("proline", "proline := proline::FLOAT")  # MLflow widens these to double
    rows = aifuncs.sql(con, f"SELECT ai_query('wine', {as_float32}) FROM wines ORDER BY id").fetchall()
    assert through_pyfunc == [len(wines)]
    assert [r[0] for r in rows] == expected  # proline is a whole number in this data set: exact as FLOAT
