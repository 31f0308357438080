"""The usage breakdowns sum the daily rollup in SQL (per key and endpoint) under the visibility rule of
governance/visibility.py at the rollup's grain: an admin reads all; anyone else its own buckets begun since it
was made and its managed endpoints' buckets begun since each was made, to the millisecond the log writes."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from aifuncs.runtime._rollups import Rollups, Scope, since_stamp
from aifuncs.runtime._usage import _COLUMNS, UsageRow, _connect

DAY = "2026-03-04"


def _log(path: Path, rows: list[tuple[str, str, str, int]]) -> Rollups:
    """Usage rows (time, endpoint, requester, input tokens), folded into the rollups."""
    db = _connect(path)
    with db:
        db.executemany(
            f"INSERT INTO usage ({_COLUMNS}) VALUES ({', '.join('?' * len(UsageRow._fields))})",
            [
                UsageRow(ts, endpoint, 1, "openai", "ai_query", 1, tokens, 1, 10.0, "ok", 1, None,
                         f"r{i}", requester, "rest", status_code=500 if tokens == 7 else 200)
                for i, (ts, endpoint, requester, tokens) in enumerate(rows)
            ],
        )  # fmt: skip
    db.close()
    rollups = Rollups(path)
    assert rollups.refresh() == len(rows)
    return rollups


def _sums(rollups: Rollups, key: str, scope: Scope, endpoint: str | None = None) -> dict[tuple, int]:
    return {
        (s.key, s.endpoint): s.input_tokens for s in rollups.daily_sums("2026-03-01", key, scope, endpoint)
    }


def test_since_stamp_compares_as_the_instant_does() -> None:
    made = datetime(2026, 3, 4, 12, 0, 0, 123400, tzinfo=UTC)
    assert since_stamp(made) == "2026-03-04T12:00:00.124+00:00"  # a row logged at .123 was before it
    assert since_stamp(made.replace(microsecond=123000)) == "2026-03-04T12:00:00.123+00:00"
    assert since_stamp(datetime(2026, 3, 4, 12)) == "2026-03-04T12:00:00.000+00:00"  # naive: UTC
    assert since_stamp(None) == ""


def test_sums_follow_the_visibility_rule_per_key_and_endpoint(tmp_path: Path) -> None:
    rollups = _log(
        tmp_path / "usage.db",
        [
            (f"{DAY}T09:00:00.000+00:00", "llm", "alice", 1),  # alice's, before she was made again
            (f"{DAY}T10:00:00.000+00:00", "llm", "alice", 2),
            (
                f"{DAY}T12:00:00.123+00:00",
                "llm",
                "bob",
                4,
            ),  # bob's bucket begins a moment before llm2 was made
            (f"{DAY}T12:00:00.124+00:00", "llm2", "bob", 8),
            ("2026-03-05T08:00:00.000+00:00", "llm2", "alice", 16),
            ("2026-03-05T08:30:00.000+00:00", "llm2", "carol", 7),
            ("2026-03-05T09:00:00.000+00:00", "other", "carol", 32),
        ],
    )
    everything = _sums(rollups, "endpoint", Scope(everything=True))
    assert everything == {("llm", "llm"): 7, ("llm2", "llm2"): 8 + 16 + 7, ("other", "other"): 32}
    made = datetime(2026, 3, 4, 12, 0, 0, 123400, tzinfo=UTC)
    # alice made again at 09:30 on the 4th: her 09:00 bucket is her predecessor's; she manages llm2 since `made`
    alice = Scope(
        requester="alice",
        requester_since=datetime(2026, 3, 4, 9, 30, tzinfo=UTC),
        endpoints={"llm2": made},
    )
    assert (
        _sums(rollups, "requester", alice)
        == {
            ("bob", "llm2"): 8,
            ("alice", "llm2"): 16,
            ("carol", "llm2"): 7,
        }
    )  # her 10:00 bucket (same day, same key as the 09:00 one) is folded with it and began before she was made
    assert _sums(rollups, "requester", Scope(requester="alice")) == {
        ("alice", "llm"): 3,
        ("alice", "llm2"): 16,
    }
    by_day = rollups.daily_sums("2026-03-01", "day", alice)
    assert {(s.key, s.endpoint): (s.requests, s.errors) for s in by_day} == {
        (DAY, "llm2"): (1, 0),
        ("2026-03-05", "llm2"): (2, 1),
    }
    assert _sums(rollups, "requester", alice, endpoint="llm2") == {
        ("bob", "llm2"): 8,
        ("alice", "llm2"): 16,
        ("carol", "llm2"): 7,
    }
    assert _sums(rollups, "requester", Scope(requester="mallory")) == {}
    assert rollups.daily_sums("2026-03-05", "endpoint", Scope(everything=True), "llm") == []
