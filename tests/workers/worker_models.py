"""Models the worker tests serve (importable by name in worker processes: this folder is on their PYTHONPATH)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pandas as pd

if os.environ.get("WORKER_MODELS_LOAD_S"):  # a model that takes a while to load (read at import: the load)
    time.sleep(float(os.environ["WORKER_MODELS_LOAD_S"]))


def slow(values: pd.Series) -> np.ndarray:
    """Doubles, after 0.3 s: long enough to be killed while answering."""
    time.sleep(0.3)
    return (values * 2).to_numpy()


def busy(values: pd.Series) -> np.ndarray:
    """CPU-bound: about 20 ms of pure Python a row (the autoscaling benchmark's model)."""
    out = []
    for value in values:
        deadline = time.thread_time() + float(os.environ.get("BUSY_MODEL_S", "0.02"))
        while time.thread_time() < deadline:
            pass
        out.append(value * 2)
    return np.asarray(out, dtype="float64")


def hangs_once(values: pd.Series) -> np.ndarray:
    """Hangs the first time it is called anywhere (a marker file says it did), then doubles."""
    marker = Path(os.environ["HANG_MARKER"])
    if not marker.exists():
        marker.write_text(str(os.getpid()))
        time.sleep(3600)
    return (values * 2).to_numpy()


def hangs(values: pd.Series) -> np.ndarray:
    time.sleep(3600)
    return values.to_numpy()


def pid(values: pd.Series) -> np.ndarray:
    """The worker's process id, one per row: which worker answered."""
    return np.full(len(values), os.getpid(), dtype="int64")
