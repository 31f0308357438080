"""aifuncs: AI functions for SQL.

import aifuncs
aifuncs.endpoints.create("wine", kind="mlflow", model_uri="models:/wine/1")
con = aifuncs.connect("warehouse.duckdb")
aifuncs.sql(con, "SELECT ai_query('wine', struct_pack(alcohol, proline)) FROM wines").df()
wines["score"] = wines.ai.query("wine", columns=["alcohol", "proline"])
"""

from __future__ import annotations

from aifuncs import cache, index
from aifuncs import catalog as endpoints
from aifuncs.catalog import Endpoint, ServedEntity
from aifuncs.engines import pandas  # registers the `.ai` accessors of Series and DataFrames
from aifuncs.engines.duckdb import connect, explain, install, sql
from aifuncs.errors import AifuncsError
from aifuncs.runtime import set_session_budget
from aifuncs.session import RequestOptions, SpendingLimits

__version__ = "0.1.0"

__all__ = [
    "AifuncsError",
    "Endpoint",
    "RequestOptions",
    "ServedEntity",
    "SpendingLimits",
    "cache",
    "connect",
    "endpoints",
    "explain",
    "index",
    "install",
    "pandas",
    "set_session_budget",
    "sql",
    "__version__",
]
