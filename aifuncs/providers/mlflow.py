"""`mlflow` endpoints: any MLflow pyfunc model URI, loaded once per process on first use."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pyarrow as pa
from pydantic import Field

from aifuncs._fork import renewed_in_child
from aifuncs._home import home
from aifuncs._types import mlflow_schema_type, mlflow_spec_type
from aifuncs.errors import ConfigError, MissingDependency
from aifuncs.providers.base import CallOptions, InputColumn, Provider, ProviderOptions
from aifuncs.providers.python import to_pandas_input

_lock = threading.Lock()
renewed_in_child(globals(), "_lock")
_models: dict[tuple[str, str], Any] = {}
_infos: dict[tuple[str, str], Any] = {}

# Flavours whose pyfunc predict is the estimator's own method applied to the schema-enforced frame, with
# nothing else in between: for them the enforcement may be done by us, once, from the Arrow types.
_PLAIN_FLAVOURS = frozenset({"mlflow.sklearn"})
# Arrow types that MLflow's schema enforcement leaves as they are (to_pandas gives the exact NumPy dtype).
_EXACT_ARROW = {
    "double": pa.float64(),
    "float": pa.float32(),
    "long": pa.int64(),
    "integer": pa.int32(),
    "boolean": pa.bool_(),
}


class MlflowOptions(ProviderOptions):
    model_uri: str = Field(description="models:/name/version, models:/name@alias, runs:/id/path or a path.")
    tracking_uri: str | None = Field(
        default=None,
        description="Tracking and registry store; default $MLFLOW_TRACKING_URI, else AIFUNCS_HOME/mlflow.db.",
    )


def default_tracking_uri() -> str:
    import os

    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{home() / 'mlflow.db'}"


def _mlflow() -> Any:
    try:
        import mlflow
    except ImportError:  # pragma: no cover - mlflow is a core dependency
        raise MissingDependency("The mlflow kind needs mlflow: pip install mlflow") from None
    return mlflow


def _with_store(tracking_uri: str, action: Any) -> Any:
    # MLflow resolves models:/ URIs through process-wide registry settings; hold the lock while they are set.
    mlflow = _mlflow()
    with _lock:
        previous = (mlflow.get_tracking_uri(), mlflow.get_registry_uri())
        mlflow.set_tracking_uri(tracking_uri)
        mlflow.set_registry_uri(tracking_uri)
        try:
            return action(mlflow)
        finally:
            mlflow.set_tracking_uri(previous[0])
            mlflow.set_registry_uri(previous[1])


class MlflowProvider(Provider):
    kind = "mlflow"
    bulk_batch_rows = 524_288
    accepts_chunks = True
    Options = MlflowOptions
    options: MlflowOptions

    @property
    def _key(self) -> tuple[str, str]:
        return (self.options.model_uri, self.options.tracking_uri or default_tracking_uri())

    def _info(self) -> Any:
        key = self._key
        if key not in _infos:
            try:
                info = _with_store(key[1], lambda m: m.models.get_model_info(key[0]))
            except Exception as error:
                raise ConfigError(
                    f"Endpoint {self.endpoint.name!r}: cannot read the MLflow model {key[0]!r}"
                    f" from {key[1]!r}: {error}"
                ) from None
            _infos[key] = info
        return _infos[key]

    def model(self) -> Any:
        key = self._key
        model = _models.get(key)
        if model is None:
            try:
                model = _with_store(key[1], lambda m: m.pyfunc.load_model(key[0]))
            except Exception as error:
                raise ConfigError(
                    f"Endpoint {self.endpoint.name!r}: cannot load the MLflow model {key[0]!r}"
                    f" from {key[1]!r}: {error}"
                ) from None
            _models[key] = model
        return model

    def model_version(self) -> str | None:
        # The logged model's id: an alias or "latest" that moves to another model changes it, and with
        # it the cache keys of this endpoint's answers.
        uuid = getattr(self._info(), "model_uuid", None)
        return str(uuid) if uuid else None

    def input_columns(self) -> list[InputColumn] | None:
        signature = self._info().signature
        if signature is None or signature.inputs is None or not signature.inputs.has_input_names():
            return None
        return [
            InputColumn(spec.name, mlflow_spec_type(spec), required=getattr(spec, "required", True))
            for spec in signature.inputs.inputs
        ]

    def output_type(self) -> str | None:
        if self.options.returns:
            return self.options.returns
        signature = self._info().signature
        return mlflow_schema_type(signature.outputs) if signature is not None else None

    blocking = True

    async def predict(self, requests: pa.Array | pa.ChunkedArray, options: CallOptions) -> Any:
        # Loading and scoring are CPU work: keep them off the event loop.
        return await asyncio.to_thread(self._predict, requests, options.parameters)

    def predict_blocking(self, requests: pa.Array | pa.ChunkedArray, options: CallOptions) -> Any:
        return self._predict(requests, options.parameters)

    def _predict(self, requests: pa.Array | pa.ChunkedArray, parameters: dict[str, Any] | None) -> Any:
        model = self.model()
        if not parameters:
            frame = self._enforced_frame(model, requests)
            if frame is not None:
                return self._flavour_predict(model)(frame)
        data = to_pandas_input(requests)
        if not pa.types.is_struct(requests.type):
            columns = self.input_columns()
            if columns and len(columns) == 1:
                data = data.to_frame(columns[0].name)
        return model.predict(data, params=parameters or None)

    def _enforced_frame(self, model: Any, requests: pa.Array | pa.ChunkedArray) -> Any:
        """The frame MLflow's schema enforcement would hand a plain flavour's estimator, built straight from
        Arrow: columns in the signature's order, already of its types. On 262,144 rows enforcement copies
        the frame and costs ~4 ms of mostly GIL-bound pandas work, which serializes concurrent bulk calls.
        None where enforcement could change anything (another type, an integer NULL, a missing optional
        column, a flavour with its own pre-processing): the model's own predict runs then."""
        plain = getattr(model, "loader_module", None) in _PLAIN_FLAVOURS
        if not plain or not pa.types.is_struct(requests.type):
            return None
        signature = self._info().signature
        inputs = signature.inputs if signature is not None else None
        if inputs is None or inputs.is_tensor_spec() or not inputs.has_input_names():
            return None
        fields = {field.name: field.type for field in requests.type}
        names = []
        for spec in inputs.inputs:
            exact = _EXACT_ARROW.get(getattr(spec.type, "name", ""))
            if exact is None or fields.get(spec.name) != exact:
                return None
            names.append(spec.name)
        if len(names) != len(fields):
            return None
        table = pa.Table.from_struct_array(requests).select(names)
        if any(c.null_count and not pa.types.is_floating(c.type) for c in table.columns):
            return None  # pandas would make it float with NaN, which enforcement refuses
        return table.to_pandas()

    def _flavour_predict(self, model: Any) -> Any:
        # The estimator's method the pyfunc calls (a model logged with pyfunc_predict_fn="predict_proba"
        # names it); scikit-learn's pyfunc wrapper calls exactly this on the enforced frame.
        name = model.metadata.flavors.get("python_function", {}).get("predict_fn", "predict")
        return getattr(model.get_raw_model(), name)
