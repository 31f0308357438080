"""Models and functions the tests register as endpoints (importable by name: tests/ is on sys.path)."""

from __future__ import annotations

import mlflow
import numpy as np
import pandas as pd
import pyarrow as pa

CALLS: list[int] = []  # batch sizes seen by `doubled`, so tests can count model calls


def doubled(data: pd.Series | pd.DataFrame) -> np.ndarray:
    CALLS.append(len(data))
    if isinstance(data, pd.DataFrame):
        return (data["a"] * 2 + data["b"]).to_numpy()
    return (data * 2).to_numpy()


SWITCH_INTERVALS: list[float] = []


def doubled_noting_switch_interval(values: pd.Series) -> np.ndarray:
    """Doubles, noting the GIL switch interval the call ran under."""
    import sys

    SWITCH_INTERVALS.append(sys.getswitchinterval())
    return (values * 2).to_numpy()


def fails_on_13(values: pd.Series) -> pd.Series:
    if (values == 13).any():
        raise ValueError("13 is unlucky")
    return values * 10.0


def arrow_length(values: pa.Array) -> pa.Array:
    return pa.compute.utf8_length(values)


ARROW_TYPES: list[str] = []  # what `arrow_doubled` was handed, so tests can check the promised type


def arrow_doubled(values: pa.Array) -> pa.Array:
    ARROW_TYPES.append(type(values).__name__)
    return pa.compute.multiply(values, 2.0)


def wrong_length(values: pd.Series) -> list[int]:
    return [1]


class SumAndLabel(mlflow.pyfunc.PythonModel):
    """A custom pyfunc model returning several columns."""

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:  # type: ignore[no-untyped-def]
        total = model_input["x"] + model_input["y"]
        if (model_input["x"] < 0).any():
            raise ValueError("x must not be negative")
        return pd.DataFrame({"total": total, "label": np.where(total > 10, "big", "small")})


def shouted(values: pa.Array) -> pa.Array:
    """Text in, text out: the request in capitals."""
    return pa.compute.utf8_upper(values)


SLOW_CALLS: list[int] = []  # batch sizes seen by `slow_doubled`


def slow_doubled(values: pd.Series) -> np.ndarray:
    """Doubles after 20 ms (a model busy long enough for concurrent requests to queue); 13 fails its batch."""
    import os
    import time

    SLOW_CALLS.append(len(values))
    if os.environ.get("SAMPLE_CALLS_FILE"):  # a server process's calls, for the test that started it
        with open(os.environ["SAMPLE_CALLS_FILE"], "a") as calls:
            calls.write(f"{len(values)}\n")
    time.sleep(0.02)
    if (values == 13).any():
        raise ValueError("13 is unlucky")
    return (values * 2).to_numpy()


def sleepy(values: pd.Series) -> np.ndarray:
    """Doubles after a second: a request still in flight when its server is asked to stop."""
    import time

    time.sleep(1.0)
    return (values * 2).to_numpy()


class FailsToLoad(mlflow.pyfunc.PythonModel):
    """A model whose weights cannot be loaded: loading it raises."""

    def load_context(self, context) -> None:  # type: ignore[no-untyped-def]
        raise RuntimeError("the model's weights are missing")

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:  # type: ignore[no-untyped-def]
        return model_input
