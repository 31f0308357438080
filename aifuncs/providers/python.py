"""`python` endpoints: a vectorized Python function named as "package.module:function"."""

from __future__ import annotations

import asyncio
import importlib
import re
import threading
from collections.abc import Callable
from typing import Any, Literal

import pyarrow as pa
from pydantic import Field, field_validator

from aifuncs._fork import renewed_in_child
from aifuncs.errors import ConfigError
from aifuncs.providers.base import CallOptions, Provider, ProviderOptions

_TARGET = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")
_lock = threading.Lock()
renewed_in_child(globals(), "_lock")
_loaded: dict[str, Callable[..., Any]] = {}


class PythonOptions(ProviderOptions):
    function: str = Field(description='The function, as "package.module:function".')
    input_format: Literal["pandas", "arrow"] = Field(
        default="pandas",
        description="pandas: a DataFrame for a STRUCT request, else a Series. arrow: a pyarrow Array.",
    )

    @field_validator("function")
    @classmethod
    def _check_target(cls, value: str) -> str:
        if not _TARGET.match(value):
            raise ValueError(f'{value!r} is not of the form "package.module:function"')
        return value


def load_function(target: str) -> Callable[..., Any]:
    with _lock:
        if target in _loaded:
            return _loaded[target]
        module_name, _, attribute = target.partition(":")
        try:
            obj: Any = importlib.import_module(module_name)
            for part in attribute.split("."):
                obj = getattr(obj, part)
        except (ImportError, AttributeError) as error:
            raise ConfigError(f"Cannot load the function {target!r}: {error}") from None
        if not callable(obj):
            raise ConfigError(f"{target!r} is not callable")
        _loaded[target] = obj
        return obj


def to_pandas_input(requests: pa.Array | pa.ChunkedArray) -> Any:
    """A STRUCT batch becomes a DataFrame (one column per field); anything else a Series."""
    if pa.types.is_struct(requests.type):
        return pa.Table.from_struct_array(requests).to_pandas()
    return requests.to_pandas()


class PythonProvider(Provider):
    kind = "python"
    bulk_batch_rows = 262_144
    accepts_chunks = True
    Options = PythonOptions
    options: PythonOptions

    def output_type(self) -> str | None:
        return self.options.returns

    blocking = True

    async def predict(self, requests: pa.Array | pa.ChunkedArray, options: CallOptions) -> Any:
        return await asyncio.to_thread(self.predict_blocking, requests, options)

    def predict_blocking(self, requests: pa.Array | pa.ChunkedArray, options: CallOptions) -> Any:
        function = load_function(self.options.function)
        return self._call(function, requests, dict(options.parameters or {}))

    def _call(self, function: Callable[..., Any], requests: pa.Array | pa.ChunkedArray, kwargs: Any) -> Any:
        # Converted here, in the worker thread: a bulk step's conversion would stall the event loop.
        if self.options.input_format == "pandas":
            return function(to_pandas_input(requests), **kwargs)
        if isinstance(requests, pa.ChunkedArray):  # the function was promised one array
            requests = requests.combine_chunks()
        return function(requests, **kwargs)
