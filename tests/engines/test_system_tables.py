"""The DuckDB system tables carry every column of the logs they read."""

from __future__ import annotations

import json
from pathlib import Path

import aifuncs
from aifuncs import ServedEntity
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


def test_aifuncs_endpoints_shows_each_served_entity_and_its_share(home: Path) -> None:
    def doubler(name: str, share: int) -> ServedEntity:
        return ServedEntity(name, "python", {"function": "sample_models:doubled", "returns": "DOUBLE"}, share)

    aifuncs.endpoints.create("ads", served_entities=[doubler("prod", 90), doubler("candidate", 10)])
    aifuncs.endpoints.create("one", kind="python", function="sample_models:doubled")
    con = aifuncs.connect()
    shape = '[{"name": "VARCHAR", "kind": "VARCHAR", "traffic_percentage": "INTEGER"}]'
    rows = con.execute(
        "SELECT e.name, s.name, s.kind, s.traffic_percentage FROM aifuncs_endpoints e,"
        " unnest(from_json(e.served_entities, ?)) AS u(s) ORDER BY e.name, s.traffic_percentage DESC",
        [shape],
    ).fetchall()
    assert rows == [
        ("ads", "prod", "python", 90),
        ("ads", "candidate", "python", 10),
        ("one", "one", "python", 100),  # an endpoint of one model: its own sole entity
    ]
    # The columns of before hold: one row per endpoint, its options the first entity's.
    ((options, entities),) = con.execute(
        "SELECT options, served_entities FROM aifuncs_endpoints WHERE name = 'ads'"
    ).fetchall()
    assert json.loads(options) == {"function": "sample_models:doubled", "returns": "DOUBLE"}
    assert json.loads(entities)[1] == doubler("candidate", 10).to_dict()
    aifuncs.endpoints.update("ads", served_entities=[doubler("prod", 100)])  # read fresh on every query
    ((after,),) = con.execute("SELECT served_entities FROM aifuncs_endpoints WHERE name = 'ads'").fetchall()
    assert [e["name"] for e in json.loads(after)] == ["prod"]
    con.close()
