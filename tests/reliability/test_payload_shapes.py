"""Every output shape a model may return becomes one inference-table value per row (a pandas Series once failed
every query of an endpoint with an inference table: `Series.to_dict()` takes no orient)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from aifuncs.runtime._payloads import _as_list


@pytest.mark.parametrize(
    ("output", "rows"),
    [
        (pd.Series([1.5, 2.5]), [1.5, 2.5]),
        ([1, 2], [1, 2]),
        (np.array([1, 2]), [1, 2]),
        (pa.array(["a", None]), ["a", None]),
        (pa.chunked_array([["a"], ["b"]]), ["a", "b"]),
        (pd.DataFrame({"x": [1, 2], "y": ["a", "b"]}), [{"x": 1, "y": "a"}, {"x": 2, "y": "b"}]),
        (pa.array([{"x": 1}, {"x": 2}]), [{"x": 1}, {"x": 2}]),
        (pa.table({"x": [1, 2]}), [{"x": 1}, {"x": 2}]),
        (None, []),
    ],
    ids=["series", "list", "numpy", "arrow", "chunked", "dataframe", "struct", "table", "none"],
)
def test_each_output_shape_is_one_value_per_row(output: object, rows: list[object]) -> None:
    found = _as_list(output)
    assert json.loads(json.dumps(found, default=str)) == rows
