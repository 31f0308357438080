"""`mlflow` endpoints: any MLflow pyfunc model URI, loaded once per process on first use."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pyarrow as pa
from pydantic import Field

from aifuncs._home import home
from aifuncs._types import mlflow_schema_type, mlflow_spec_type
from aifuncs.errors import ConfigError, MissingDependency
from aifuncs.providers.base import CallOptions, InputColumn, Provider, ProviderOptions
from aifuncs.providers.python import to_pandas_input

_lock = threading.Lock()
_models: dict[tuple[str, str], Any] = {}
_infos: dict[tuple[str, str], Any] = {}


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
    bulk_batch_rows = 262_144
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

    async def predict(self, requests: pa.Array, options: CallOptions) -> Any:
        # Loading and scoring are CPU work: keep them off the event loop.
        return await asyncio.to_thread(self._predict, requests, options.parameters)

    def _predict(self, requests: pa.Array, parameters: dict[str, Any] | None) -> Any:
        model = self.model()
        data = to_pandas_input(requests)
        if not pa.types.is_struct(requests.type):
            columns = self.input_columns()
            if columns and len(columns) == 1:
                data = data.to_frame(columns[0].name)
        return model.predict(data, params=parameters or None)
