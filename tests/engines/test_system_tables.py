"""The DuckDB system tables carry every column of the logs they read."""

from __future__ import annotations

from pathlib import Path

import aifuncs
from aifuncs.runtime import default_runtime
from aifuncs.runtime._usage import UsageRow


def test_aifuncs_usage_has_every_column_of_the_usage_log_ttft_ms_included(home: Path) -> None:
    aifuncs.endpoints.create("doubler", kind="python", function="sample_models:doubled")
    con = aifuncs.connect()
    aifuncs.sql(con, "SELECT ai_query('doubler', range::DOUBLE) FROM range(3)").fetchall()  # type: ignore[union-attr]
    default_runtime().usage.flush()
    columns = [row[0] for row in con.execute("DESCRIBE aifuncs_usage").fetchall()]
    assert set(UsageRow._fields) <= set(columns), set(UsageRow._fields) - set(columns)
    # A request that did not stream has no time to a first token.
    assert con.execute("SELECT endpoint, ttft_ms FROM aifuncs_usage").fetchall() == [("doubler", None)]
    con.close()
