"""An MLflow model that takes SLOW_LOAD_S seconds to load and answers with its worker's process id (which
server process answered: the worker's parent). Importable by name in worker processes."""

from __future__ import annotations

import os
import time
from typing import Any

import mlflow.pyfunc
import pandas as pd


class SlowToLoad(mlflow.pyfunc.PythonModel):  # type: ignore[misc]
    def load_context(self, context: Any) -> None:
        time.sleep(float(os.environ.get("SLOW_LOAD_S", "0")))

    def predict(self, context, model_input: pd.DataFrame, params=None) -> list[int]:  # type: ignore[no-untyped-def]
        return [os.getpid()] * len(model_input)
