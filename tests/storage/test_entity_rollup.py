"""Usage by served entity in the runtime's rollups, the same on SQLite files and on PostgreSQL: per endpoint,
entity that answered and requester, with the requests a fallback answered (usage label `fallback_from`), equal
to the counts taken straight from the usage rows; each row folded once (only new rows on a refresh), a caller's
malformed label counted as no fallback and never stopping the fold, buckets read under the visibility rule."""

from __future__ import annotations

import json
import random
import sqlite3
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

from aifuncs.runtime._rollups import Rollups, Scope
from aifuncs.runtime._usage import UsageLog, UsageRow

ENTITIES = {"ads": ["prod", "candidate"], "chat": [None]}  # None: an endpoint of one model
LABELS = [
    None,
    json.dumps({"team": "growth"}),
    json.dumps({"fallback_from": "prod"}),
    json.dumps({"team": "growth", "fallback_from": "candidate"}),
    json.dumps({"fallback_from": None}),  # set to null: not a fallback (SQLite's json_extract is NULL)
    '{"fallback_from": "prod"',  # malformed: a caller's text, counted as no fallback
    '["fallback_from"]',  # not an object
    '"fallback_from"',
    json.dumps({"note": "fallback_from", "fallback_from": "\u0000x"}),
    json.dumps({"FALLBACK_FROM": "prod"}),  # labels are case-sensitive on both backends
]


def _rows(rng: random.Random, start: int, count: int) -> list[UsageRow]:
    rows = []
    for n in range(start, start + count):
        endpoint = rng.choice(sorted(ENTITIES))
        code = rng.choice([200, 200, 200, 429, 500, None])
        rows.append(
            UsageRow(
                ts=f"2026-03-0{1 + n % 3}T{rng.randrange(24):02d}:{rng.randrange(60):02d}:00.{n % 1000:03d}+00:00",
                endpoint=endpoint, endpoint_version=1, kind="openai", function="ai_query", rows=rng.randint(1, 9),
                input_tokens=rng.choice([None, rng.randint(1, 500)]), output_tokens=rng.randint(1, 50),
                latency_ms=rng.random() * 100, status="ok" if code in (200, None) and n % 7 else "error",
                attempts=1, error=None, request_id=f"req-{n}", requester=rng.choice(["alice", "bob", None]),
                origin="rest", usage_context=rng.choice(LABELS), status_code=code,
                served_entity=rng.choice(ENTITIES[endpoint]),
            )
        )  # fmt: skip
    return rows


def _fallback(context: str | None) -> int:
    try:
        labels = json.loads(context or "")
    except ValueError:
        return 0
    return int(isinstance(labels, dict) and labels.get("fallback_from") is not None)


def _expected(rows: list[dict]) -> dict[tuple[str, str], tuple[int, ...]]:
    """Per (endpoint, entity that answered), counted from the usage rows themselves."""
    found: dict[tuple[str, str], Counter[str]] = {}
    for r in rows:
        c = found.setdefault((r["endpoint"], r["served_entity"] or r["endpoint"]), Counter())
        code = r["status_code"] if r["status_code"] is not None else (200 if r["status"] == "ok" else 500)
        c["requests"] += 1
        c["errors"] += code >= 400
        c["fallbacks"] += _fallback(r["usage_context"])
        c["rows"] += r["rows"]
        c["input_tokens"] += r["input_tokens"] or 0
        c["output_tokens"] += r["output_tokens"] or 0
    keys = ("requests", "errors", "fallbacks", "rows", "input_tokens", "output_tokens")
    return {k: tuple(c[name] for name in keys) for k, c in found.items()}


def _sums(
    rollups: Rollups, scope: Scope, endpoint: str | None = None
) -> dict[tuple[str, str], tuple[int, ...]]:
    return {
        (s.endpoint, s.served_entity): (
            s.requests,
            s.errors,
            s.fallbacks,
            s.rows,
            s.input_tokens,
            s.output_tokens,
        )
        for s in rollups.entity_sums("2026-03-01", scope, endpoint)
    }


def test_entity_figures_equal_the_usage_rows_on_both_backends(backend: str, home: Path) -> None:
    rng = random.Random(27)
    log = UsageLog()
    for row in _rows(rng, 0, 400):
        log.record(row)
    log.flush()
    rollups = Rollups(home / "usage.db")
    assert rollups.refresh() == 400
    logged = log.read()
    assert len(logged) == 400
    expected = _expected(logged)
    assert sum(v[2] for v in expected.values()) > 20  # fallbacks among them, and not every label is one
    assert set(expected) == {("ads", "prod"), ("ads", "candidate"), ("chat", "chat")}
    assert _sums(rollups, Scope(everything=True)) == expected
    assert _sums(rollups, Scope(everything=True), "ads") == {
        k: v for k, v in expected.items() if k[0] == "ads"
    }
    latency = {
        (s.endpoint, s.served_entity): s.latency_ms for s in rollups.entity_sums("2026-03-01", Scope(True))
    }
    for key in expected:
        exact = sum(
            r["latency_ms"] for r in logged if (r["endpoint"], r["served_entity"] or r["endpoint"]) == key
        )
        assert abs(latency[key] - exact) < 1e-6 * exact

    # Only the new rows fold, and the figures stay exact
    for row in _rows(rng, 400, 50):
        log.record(row)
    log.flush()
    assert rollups.refresh() == 50
    assert rollups.refresh() == 0
    logged = log.read()
    assert _sums(rollups, Scope(everything=True)) == _expected(logged)

    # Per hour: requests and fallbacks of each entity of one endpoint
    hourly: Counter[tuple[str, str, str]] = Counter()
    for h in rollups.entity_hourly("2026-03-01T00", "ads", None):
        hourly[(h.hour, h.served_entity, "requests")] += h.requests
        hourly[(h.hour, h.served_entity, "fallbacks")] += h.fallbacks
    counted: Counter[tuple[str, str, str]] = Counter()
    for r in logged:
        if r["endpoint"] == "ads":
            counted[(r["ts"][:13], r["served_entity"], "requests")] += 1
            counted[(r["ts"][:13], r["served_entity"], "fallbacks")] += _fallback(r["usage_context"])
    assert +hourly == +counted

    # bob reads only his own buckets
    bob = [r for r in logged if r["requester"] == "bob"]
    assert _sums(rollups, Scope(requester="bob")) == _expected(bob)


def test_entity_buckets_follow_the_visibility_rule(backend: str, home: Path) -> None:
    log = UsageLog()
    base = UsageRow("", "ads", 1, "openai", "ai_query", 1, 1, 1, 1.0, "ok", 1, None, origin="rest")
    rows = [
        ("2026-03-03T09:10:00.000+00:00", "alice", "prod", None),  # before the endpoint was made again
        ("2026-03-04T11:00:00.000+00:00", "erin", "prod", None),  # the same day, before it: her day too
        ("2026-03-04T12:10:00.000+00:00", "alice", "prod", json.dumps({"fallback_from": "candidate"})),
        ("2026-03-04T12:20:00.000+00:00", "carol", "candidate", None),
    ]
    for n, (ts, requester, entity, labels) in enumerate(rows):
        log.record(base._replace(ts=ts, requester=requester, served_entity=entity, usage_context=labels,
                                 request_id=f"v-{n}"))  # fmt: skip
    log.flush()
    rollups = Rollups(home / "usage.db")
    assert rollups.refresh() == 4
    made = datetime(2026, 3, 4, 12, 0, tzinfo=UTC)
    # a manager of `ads` since 12:00 reads the buckets begun since, every requester's: not the day before, nor
    # erin's day (a bucket is read whole or not at all, as the other rollups' buckets)
    manager = _sums(rollups, Scope(requester="dave", endpoints={"ads": made}))
    assert manager == {("ads", "prod"): (1, 0, 1, 1, 1, 1), ("ads", "candidate"): (1, 0, 0, 1, 1, 1)}
    # carol, no manager, reads her own requests only
    assert _sums(rollups, Scope(requester="carol")) == {("ads", "candidate"): (1, 0, 0, 1, 1, 1)}
    # alice made again on the 4th: her request of the 3rd was her predecessor's
    alice = _sums(rollups, Scope(requester="alice", requester_since=datetime(2026, 3, 4, 10, tzinfo=UTC)))
    assert alice == {("ads", "prod"): (1, 0, 1, 1, 1, 1)}
    chart = [
        (h.hour, h.served_entity, h.requests) for h in rollups.entity_hourly("2026-03-04T00", "ads", made)
    ]
    assert chart == [("2026-03-04T12", "candidate", 1), ("2026-03-04T12", "prod", 1)]


def test_a_home_with_the_former_ui_rollup_is_folded_again_from_its_log(home: Path) -> None:
    # usage.db as an earlier version left it: the main rollups caught up, and the web UI's own entity table
    # (with its own place in the log) holding figures the new set of tables does not trust
    log = UsageLog()
    for row in _rows(random.Random(5), 0, 60):
        log.record(row)
    log.flush()
    rollups = Rollups(home / "usage.db")
    assert rollups.refresh() == 60
    db = sqlite3.connect(home / "usage.db")
    with db:
        db.execute("DELETE FROM usage_rollup_state WHERE name = 'entities_v1'")
        db.execute("DROP TABLE usage_entity_hourly")
        db.execute(
            "CREATE TABLE usage_entity_hourly (hour TEXT NOT NULL, endpoint TEXT NOT NULL, served_entity TEXT NOT"
            " NULL, requester TEXT NOT NULL, requests INTEGER NOT NULL, errors INTEGER NOT NULL, fallbacks INTEGER"
            " NOT NULL, rows INTEGER NOT NULL, input_tokens INTEGER NOT NULL, output_tokens INTEGER NOT NULL,"
            " latency_ms REAL NOT NULL, first_ts TEXT NOT NULL, PRIMARY KEY (hour, endpoint, served_entity,"
            " requester))"
        )
        db.execute("INSERT INTO usage_entity_hourly VALUES ('2026-03-01T10', 'ads', 'prod', 'x', 9, 0, 9, 9, 9,"
                   " 9, 9.0, '2026-03-01T10:00:00.000+00:00')")  # fmt: skip
        db.execute("UPDATE usage_entity_daily SET requests = requests * 3")
        db.execute(
            "CREATE TABLE usage_entity_rollup_state (name TEXT PRIMARY KEY, last_rowid INTEGER NOT NULL)"
        )
        db.execute("INSERT INTO usage_entity_rollup_state VALUES ('v1', 60)")
    db.close()
    assert rollups.refresh() == 60  # the entity set alone, from the log's first row
    assert _sums(rollups, Scope(everything=True)) == _expected(log.read())
    daily = sum(s.requests for s in rollups.daily_sums("2026-03-01", "endpoint", Scope(everything=True)))
    assert daily == 60  # the other sets were not folded twice
    db = sqlite3.connect(home / "usage.db")
    tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    db.close()
    assert "usage_entity_rollup_state" not in tables
    chart = sum(h.requests for h in rollups.entity_hourly("2026-03-01T00", "ads", None))
    assert chart == sum(r["endpoint"] == "ads" for r in log.read())
