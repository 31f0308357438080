"""Rate limits: the AI gateway shape checked, Databricks' precedence against a small reference model, GCRA
exact across real processes, token reservations settled, and a query paced by a limit."""

from __future__ import annotations

import itertools
import re
import sqlite3
import time
from pathlib import Path

import duckdb
import pyarrow as pa
import pytest
import sample_models
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from servers import hammer_limiter

import aifuncs
import aifuncs.governance as gov
from aifuncs.engines.duckdb import sql_each, typed_error
from aifuncs.errors import ConfigError, LimiterUnavailable, RateLimited
from aifuncs.governance import limits as limits_module
from aifuncs.governance.limits import Limiter, RateLimit, Reservation, applicable, open_limiter, parse_limits
from aifuncs.governance.principals import Principal, PrincipalStore
from aifuncs.planner import bind_call
from aifuncs.runtime import default_runtime
from aifuncs.runtime._progress import Progress
from aifuncs.storage import Postgres, postgres


@pytest.fixture
def directory(home: Path) -> PrincipalStore:
    store = PrincipalStore(home / "catalog.db")
    store.create("alice")
    store.create("analysts", kind="group")
    store.create("etl", kind="service_principal")
    return store


@pytest.mark.parametrize(
    ("entries", "message"),
    [
        ([{"key": "user"}], "sets neither calls nor tokens"),
        ([{"calls": 0}], "calls must be a positive whole number"),
        ([{"calls": 10, "renewal_period": "hour"}], "renewal_period is 'minute'"),
        ([{"calls": 10, "key": "team"}], "key is one of endpoint, user, user_group, service_principal"),
        ([{"calls": 10, "key": "user_group"}], "names its group"),
        ([{"calls": 10, "key": "endpoint", "principal": "alice"}], "drop principal"),
        ([{"calls": 10, "key": "user_group", "principal": "alice"}], "'alice' is a user; a user_group limit"),
        (
            [{"calls": 10, "key": "user", "principal": "nobody"}],
            "no user, group or service principal 'nobody'",
        ),
        ([{"calls": 10, "qpm": 3}], "unknown fields \\['qpm'\\]"),
        ([{"calls": 1}, {"tokens": 5, "key": "endpoint"}], "repeated: endpoint"),
        ([{"calls": 1, "key": "user", "principal": f"u{i}"} for i in range(21)], "at most 20 rate limits"),
        (
            [{"calls": 1, "key": "user_group", "principal": f"g{i}"} for i in range(6)],
            "at most 5 group limits",
        ),
        ({"calls": 1}, "rate_limits is a list"),
    ],
)
def test_bad_limits_are_refused_whole(directory: PrincipalStore, entries: object, message: str) -> None:
    store = None if "at most" in message else directory  # the counts are checked before names would be
    with pytest.raises(ConfigError, match=message):
        parse_limits(entries, store)


def test_limits_are_set_as_the_ai_gateway_and_checked_whole(home: Path) -> None:
    gov.create_group("analysts")
    aifuncs.endpoints.create("doubler", kind="python", function="sample_models:doubled", returns="DOUBLE")
    limits = [
        {"calls": 600, "key": "endpoint"},
        {"tokens": 5000, "key": "user_group", "principal": "analysts"},
    ]
    assert aifuncs.endpoints.set_rate_limits("doubler", limits) == [
        {"calls": 600, "key": "endpoint", "renewal_period": "minute"},
        {"tokens": 5000, "key": "user_group", "principal": "analysts", "renewal_period": "minute"},
    ]
    with pytest.raises(ConfigError, match="sets neither calls nor tokens"):
        aifuncs.endpoints.set_rate_limits("doubler", [{"calls": 5, "key": "user"}, {"key": "endpoint"}])
    with pytest.raises(ConfigError, match="Unsupported AI gateway settings \\['route_optimized'\\]"):
        aifuncs.endpoints.put_ai_gateway("doubler", {"route_optimized": True})
    with pytest.raises(ConfigError, match="fallback_config.enabled is true or false"):
        aifuncs.endpoints.put_ai_gateway("doubler", {"fallback_config": {"enabled": "yes"}})
    assert len(aifuncs.endpoints.get_ai_gateway("doubler")["rate_limits"]) == 2  # unchanged by the refusals
    aifuncs.endpoints.delete("doubler")
    aifuncs.endpoints.create("doubler", kind="python", function="sample_models:doubled", returns="DOUBLE")
    assert aifuncs.endpoints.get_ai_gateway("doubler")["rate_limits"] == []  # went with the endpoint


# --- precedence: how many calls a principal gets at one instant, against a small reference model ---------

PRINCIPALS = ["alice", "bob", "etl"]
GROUPS = ["g1", "g2", "g3"]


def reference_capacity(limits: list[RateLimit], name: str, groups: set[str]) -> float:
    """Calls admitted at one instant from empty buckets: Databricks' precedence spelled out plainly."""
    cap = float("inf")
    for limit in limits:
        if limit.key == "endpoint" and limit.calls:
            cap = min(cap, limit.burst or 1)
    own = [x for x in limits if x.key in ("user", "service_principal") and x.principal == name]
    mine = [x for x in limits if x.key == "user_group" and x.principal in groups]
    default = [x for x in limits if x.key == "user" and x.principal is None]
    if own:
        personal = min((x.burst or 1) for x in own if x.calls) if any(x.calls for x in own) else float("inf")
    elif mine:
        with_calls = [x for x in mine if x.calls]
        # a member of several limited groups is held back only when all of them are spent
        personal = sum((x.burst or 1) for x in with_calls) if with_calls else float("inf")
    elif default and default[0].calls:
        personal = default[0].burst or 1
    else:
        personal = float("inf")
    return min(cap, personal)


limit_strategy = st.builds(
    lambda key, user, group, calls, tokens, burst: RateLimit(
        key,
        calls or (60 if not tokens else None),  # at least one of the two, as parse_limits insists
        tokens,
        {"endpoint": None, "user": user, "user_group": group, "service_principal": "etl"}[key],
        "minute",
        burst,
    ),
    st.sampled_from(["endpoint", "user", "user_group", "service_principal"]),
    st.sampled_from(["alice", "bob", None]),  # None: the per-user default
    st.sampled_from(GROUPS),
    st.sampled_from([None, 60]),
    st.sampled_from([None, 100_000]),
    st.integers(1, 4),
)
counter = itertools.count()


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    limits=st.lists(limit_strategy, max_size=6).map(
        lambda xs: list({(x.key, x.principal): x for x in xs}.values())  # one limit per scope
    ),
    name=st.sampled_from(PRINCIPALS),
    groups=st.sets(st.sampled_from(GROUPS)),
)
def test_precedence_matches_the_reference(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, limits: list[RateLimit], name: str, groups: set[str]
) -> None:
    monkeypatch.setattr(limits_module.time, "time", lambda: 1_000_000.0)  # one instant: no refill
    limiter = Limiter(tmp_path / f"limits-{next(counter)}.db")
    checks = applicable("ep", limits, Principal(name, "user"), groups)
    admitted = 0
    while admitted < 50 and isinstance(limiter.try_acquire(checks, 0), Reservation):  # calls only
        admitted += 1
    expected = reference_capacity(limits, name, groups)
    assert admitted == (50 if expected == float("inf") else expected)


def test_a_refusal_takes_nothing_and_names_the_wait(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [1_000_000.0]
    monkeypatch.setattr(limits_module.time, "time", lambda: clock[0])
    limiter = Limiter(tmp_path / "limits.db")
    checks = applicable(
        "ep",
        [RateLimit("endpoint", calls=60, burst=1), RateLimit("user", calls=6, burst=1)],
        Principal("alice", "user"),
        (),
    )
    assert isinstance(limiter.try_acquire(checks, 0), Reservation)
    refusal = limiter.try_acquire(checks, 0)
    assert not isinstance(refusal, Reservation)
    assert refusal.wait_s == pytest.approx(10.0) and refusal.label == "the per-user 6 calls/min"
    clock[0] += 1.0  # the endpoint's bucket has room again; the user's has not: nothing may be taken from it
    other = applicable("ep", [RateLimit("endpoint", calls=60, burst=1)], Principal("bob", "user"), ())
    assert isinstance(limiter.try_acquire(other, 0), Reservation)


def test_token_limits_reserve_the_estimate_and_settle_to_the_use(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = [1_000_000.0]
    monkeypatch.setattr(limits_module.time, "time", lambda: clock[0])
    limiter = Limiter(tmp_path / "limits.db")
    checks = applicable("ep", [RateLimit("endpoint", tokens=1000)], Principal("alice", "user"), ())
    # 50 concurrent requests of ~100 tokens against 1,000 TPM: never more than a minute's worth starts
    started = [r for r in (limiter.try_acquire(checks, 100) for _ in range(50)) if isinstance(r, Reservation)]
    assert 1 <= len(started) <= 10
    clock[0] += 6.0 * len(started)  # the reservations drain at 1,000 tokens a minute
    first = limiter.try_acquire(checks, 100)
    assert isinstance(first, Reservation)
    assert not isinstance(limiter.try_acquire(checks, 100), Reservation)
    assert limiter.try_acquire(checks, 80).wait_s == pytest.approx(6.0)  # type: ignore[union-attr]
    limiter.settle(first, 10)  # the model used 10 tokens, not 100: the other 90 come back at once
    assert limiter.try_acquire(checks, 80).wait_s == pytest.approx(0.6)  # type: ignore[union-attr]


def test_four_processes_share_one_exact_limit(tmp_path: Path) -> None:
    results = hammer_limiter(tmp_path / "limits.db", 3.0, 600, 10)
    stop = max(r["stop"] for r in results)
    admitted = sum(r["admitted"] for r in results)
    first = min(r["first"] for r in results if r["first"])
    last = max(r["last"] for r in results if r["last"])
    assert sum(r["asked"] for r in results) > 1000  # hammered, not trickled
    # GCRA's promise over the span the admissions fall in: burst + rate x time, never one more
    assert admitted <= 10 + (last - first) * 10 + 1e-6, (admitted, last - first)
    assert admitted >= 10 + (stop - first) * 10 - 1.5, (admitted, stop - first)  # and nothing withheld
    # the processes were running while the window was open: it opened once all of them were ready
    assert stop - first > 1.0


def test_a_query_waits_its_turn_or_fails_fast(backend: str, con: object) -> None:
    aifuncs.endpoints.create(
        "doubler", kind="python", function="sample_models:doubled", returns="DOUBLE", max_batch_rows=1
    )
    aifuncs.endpoints.set_rate_limits("doubler", [{"calls": 600, "key": "user", "burst": 1}])
    sample_models.CALLS.clear()
    began = time.monotonic()
    rows = aifuncs.sql(con, "SELECT ai_query('doubler', i::DOUBLE, cache => false) FROM range(12) t(i)")
    assert sorted(r[0] for r in rows.fetchall()) == [2.0 * i for i in range(12)]
    elapsed = time.monotonic() - began
    assert elapsed >= 11 * 0.1 * 0.95  # 12 requests at 10 a second: the first at once, then one per 0.1 s
    aifuncs.endpoints.set_rate_limits("doubler", [{"calls": 1, "key": "user"}])
    one = "SELECT ai_query('doubler', 1.0::DOUBLE, cache => false)"
    assert aifuncs.sql(con, one, wait_for_limits=False).fetchall() == [(2.0,)]
    calls = len(sample_models.CALLS)
    with pytest.raises(duckdb.Error) as refused:  # the bucket is spent: a caller that will not wait hears why
        aifuncs.sql(con, one, wait_for_limits=False).fetchall()
    found = re.search(
        r"rate limited \(the per-user 1 calls/min\): the next request fits in ([\d.]+) s", str(refused.value)
    )
    assert found is not None and 55 < float(found[1]) <= 60, str(refused.value)
    typed = typed_error(refused.value)  # the typed error behind DuckDB's, with the wait
    assert isinstance(typed, RateLimited) and 55 < typed.wait_s <= 60
    call = bind_call("ai_query", "doubler", pa.float64(), cache=False, wait_for_limits=False)
    with pytest.raises(RateLimited) as typed:  # the runtime's direct callers (the server) get the type
        default_runtime().run_call(call, pa.array([5.0]))
    assert 55 < typed.value.wait_s <= 60
    assert len(sample_models.CALLS) == calls
    assert len(sample_models.CALLS) == calls


def test_explain_and_progress_tell_when_a_limit_paces_the_query(
    backend: str, con: duckdb.DuckDBPyConnection
) -> None:
    aifuncs.endpoints.create(
        "doubler", kind="python", function="sample_models:doubled", returns="DOUBLE", max_batch_rows=10
    )
    aifuncs.endpoints.set_rate_limits("doubler", [{"calls": 600, "key": "endpoint"}])
    explained = aifuncs.explain(con, "SELECT ai_query('doubler', i::DOUBLE) FROM range(170000) t(i)")
    (call,) = explained.calls
    assert call.model_requests == 17_000 and call.paced_minutes == pytest.approx(
        (17_000 - 10) / 600, rel=1e-3
    )
    assert "rate limited: ~28 min at 600 calls/min (the endpoint's 600 calls/min)" in str(explained)
    progress = Progress(None)
    aifuncs.endpoints.set_rate_limits("doubler", [{"calls": 60, "key": "endpoint", "burst": 1}])
    query = "SELECT ai_query('doubler', i::DOUBLE, cache => false) FROM range(20) t(i)"
    for _, relation in sql_each(con, query, progress=progress):
        assert relation is not None and len(relation.fetchall()) == 20
    assert progress.snapshot()["paced_by"] == "the endpoint's 60 calls/min"
    assert "paced by the endpoint's 60 calls/min" in progress.line()


def _tat(path: Path) -> float:
    with sqlite3.connect(path) as db:
        return float(db.execute("SELECT tat FROM buckets").fetchone()[0])


def test_far_from_its_limit_a_bucket_lends_room_ahead(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock, ticks = [1_000_000.0], [50.0]
    monkeypatch.setattr(limits_module.time, "time", lambda: clock[0])
    monkeypatch.setattr(limits_module.time, "monotonic", lambda: ticks[0])
    limiter = Limiter(tmp_path / "limits.db")
    checks = applicable("ep", [RateLimit("endpoint", calls=6_000_000)], Principal("alice", "user"), ())
    interval = 60 / 6_000_000
    lease = limits_module.LEASE_MAX
    assert isinstance(limiter.try_acquire(checks, 0), Reservation)
    assert _tat(tmp_path / "limits.db") == pytest.approx(clock[0] + (1 + lease) * interval)  # counted ahead
    written = _tat(tmp_path / "limits.db")
    for _ in range(lease):  # the lease: no transaction, the file as it was
        assert isinstance(limiter.try_acquire(checks, 0), Reservation)
    assert _tat(tmp_path / "limits.db") == written
    assert isinstance(limiter.try_acquire(checks, 0), Reservation)  # spent: the next asks the file
    assert _tat(tmp_path / "limits.db") == pytest.approx(written + (1 + lease) * interval)
    ticks[0] += limits_module.LEASE_S  # the new lease lapses unused: its room goes back
    before = _tat(tmp_path / "limits.db")
    assert isinstance(limiter.try_acquire(checks, 0), Reservation)
    assert _tat(tmp_path / "limits.db") == pytest.approx(before - lease * interval + (1 + lease) * interval)


def test_near_its_limit_a_bucket_counts_every_request(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = [1_000_000.0]
    monkeypatch.setattr(limits_module.time, "time", lambda: clock[0])
    limiter = Limiter(tmp_path / "limits.db")
    # 60,000 calls/min with a burst of 1,000: room for leases at first, none once the burst is nearly spent
    checks = applicable("ep", [RateLimit("endpoint", calls=60_000, burst=1000)], Principal("a", "user"), ())
    admitted = sum(isinstance(limiter.try_acquire(checks, 0), Reservation) for _ in range(1200))
    assert admitted == 1000  # exactly the burst (the clock stands still): a lease never lends past it
    # token requests never come from a lease: each is reserved in the file, to be settled
    tokens = applicable(
        "ep", [RateLimit("endpoint", calls=6_000_000, tokens=6_000_000)], Principal("a", "user"), ()
    )
    first = limiter.try_acquire(tokens, 0)
    second = limiter.try_acquire(tokens, 100)
    assert isinstance(first, Reservation) and isinstance(second, Reservation) and second.buckets


# --- the same limiter on PostgreSQL: buckets in the shared database, the database's clock -------------------


@pytest.fixture
def shared_db(pg_url: str) -> Postgres:
    return postgres(pg_url)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    limits=st.lists(limit_strategy, max_size=6).map(
        lambda xs: list({(x.key, x.principal): x for x in xs}.values())
    ),
    name=st.sampled_from(PRINCIPALS),
    groups=st.sets(st.sampled_from(GROUPS)),
)
def test_precedence_on_postgres_matches_the_reference(
    tmp_path: Path, shared_db: Postgres, limits: list[RateLimit], name: str, groups: set[str]
) -> None:
    # the database's clock runs: 1 call a minute (not 60) makes a refill within an example impossible
    slow = [
        RateLimit(x.key, 1 if x.calls else None, x.tokens, x.principal, x.renewal_period, x.burst)
        for x in limits
    ]
    limiter = Limiter(tmp_path / "limits.db", shared_db)
    checks = applicable(f"ep{next(counter)}", slow, Principal(name, "user"), groups)  # fresh buckets
    admitted = 0
    while admitted < 50 and isinstance(limiter.try_acquire(checks, 0), Reservation):
        admitted += 1
    expected = reference_capacity(slow, name, groups)
    assert admitted == (50 if expected == float("inf") else expected)


def test_on_postgres_a_refusal_takes_nothing_and_tokens_settle(
    tmp_path: Path, shared_db: Postgres, pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    limiter = Limiter(tmp_path / "limits.db", shared_db)
    checks = applicable(
        "ep",
        [RateLimit("endpoint", calls=60, burst=1), RateLimit("user", calls=6, burst=1)],
        Principal("alice", "user"),
        (),
    )
    began = time.monotonic()
    assert isinstance(limiter.try_acquire(checks, 0), Reservation)
    refusal = limiter.try_acquire(checks, 0)
    assert not isinstance(refusal, Reservation) and refusal.label == "the per-user 6 calls/min"
    assert 10.0 - (time.monotonic() - began) - 1e-3 <= refusal.wait_s <= 10.0  # the database's clock ran on
    # the refused request took nothing from the endpoint's bucket: bob gets its next call once it refills
    other = applicable("ep", [RateLimit("endpoint", calls=60, burst=1)], Principal("bob", "user"), ())
    waited = limiter.try_acquire(other, 0)
    assert not isinstance(waited, Reservation) and waited.wait_s <= 1.0
    tokens = applicable("tk", [RateLimit("endpoint", tokens=1000)], Principal("alice", "user"), ())
    first = limiter.try_acquire(tokens, 100)
    assert isinstance(first, Reservation) and first.buckets
    began = time.monotonic()
    before = limiter.try_acquire(tokens, 80)
    assert not isinstance(before, Reservation)
    limiter.settle(first, 10)  # 10 used of 100: the 90 come back with this process's next admission
    after = limiter.try_acquire(tokens, 80)
    assert not isinstance(after, Reservation)
    assert before.wait_s - 90 * 0.06 - 1e-3 <= after.wait_s <= before.wait_s - 90 * 0.06 + 1e-3
    assert after.wait_s >= 0.6 - (time.monotonic() - began) - 1e-3
    # another host's limiter (its own home, the same database) is refused the same wait, less the time gone
    monkeypatch.setenv("AIFUNCS_DATABASE_URL", pg_url)
    seen = open_limiter(tmp_path / "other-home" / "limits.db").try_acquire(tokens, 80)
    assert not isinstance(seen, Reservation)
    assert after.wait_s - (time.monotonic() - began) - 1e-3 <= seen.wait_s <= after.wait_s + 1e-3


def test_on_postgres_a_bucket_lends_room_ahead_and_counts_it(
    tmp_path: Path, shared_db: Postgres, monkeypatch: pytest.MonkeyPatch
) -> None:
    ticks = [50.0]
    monkeypatch.setattr(limits_module.time, "monotonic", lambda: ticks[0])  # the lease never lapses by itself
    limiter = Limiter(tmp_path / "limits.db", shared_db)
    checks = applicable("ep", [RateLimit("endpoint", calls=6_000_000)], Principal("alice", "user"), ())
    interval, lease = 60 / 6_000_000, limits_module.LEASE_MAX

    def tat() -> float:
        with shared_db.transaction(None) as db:
            return float(db.execute("SELECT tat FROM limit_buckets WHERE key LIKE 'ep|%'").fetchone()[0])

    with shared_db.transaction(None) as db:
        clock = float(db.execute("SELECT extract(epoch FROM clock_timestamp())").fetchone()[0])
    assert isinstance(limiter.try_acquire(checks, 0), Reservation)
    written = tat()
    assert written - clock == pytest.approx(
        (1 + lease) * interval, abs=0.5
    )  # the database's clock, counted ahead
    for _ in range(lease):  # the lease: no round trip, the row as it was
        assert isinstance(limiter.try_acquire(checks, 0), Reservation)
    assert tat() == written
    assert isinstance(limiter.try_acquire(checks, 0), Reservation)  # spent: the next asks the database
    assert tat() > written


def test_on_postgres_a_locked_bucket_fails_closed_within_the_bounded_wait(
    tmp_path: Path, shared_db: Postgres, pg_url: str
) -> None:
    limiter = Limiter(tmp_path / "limits.db", shared_db)
    checks = applicable("ep", [RateLimit("endpoint", calls=600, burst=10)], Principal("alice", "user"), ())
    assert isinstance(limiter.try_acquire(checks, 0), Reservation)
    import psycopg

    with psycopg.connect(pg_url) as holder:  # another host's transaction holding the bucket's row
        holder.execute("SELECT tat FROM limit_buckets WHERE key LIKE 'ep|%' FOR UPDATE")
        began = time.monotonic()
        with pytest.raises(LimiterUnavailable) as refused:
            limiter.try_acquire(checks, 0)
        took = time.monotonic() - began
        assert limits_module.LOCK_WAIT_S * 0.9 <= took < limits_module.LOCK_WAIT_S + 3, took
        message = str(refused.value)
        assert "did not answer within 2 s" in message and "The request was not sent" in message
        assert shared_db.url.split(":")[2].split("@")[0] not in message  # the password never shown
        with pytest.raises(LimiterUnavailable):  # the next ones are refused at once, not each after a wait
            limiter.try_acquire(checks, 0)
        assert time.monotonic() - began < took + 1.0
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # released: admitted again once the refusal's second is over
        try:
            assert isinstance(limiter.try_acquire(checks, 0), Reservation)
            break
        except LimiterUnavailable as unavailable:
            time.sleep(unavailable.wait_s / 10)
    else:
        raise AssertionError("the limiter never came back after the lock was released")


def test_the_database_unreachable_fails_closed_naming_it_without_its_password(tmp_path: Path) -> None:
    from servers import free_port

    url = f"postgresql://someone:hunter2secret@127.0.0.1:{free_port()}/nothing"
    limiter = Limiter(tmp_path / "limits.db", Postgres(url))
    checks = applicable("ep", [RateLimit("endpoint", calls=600)], Principal("alice", "user"), ())
    with pytest.raises(LimiterUnavailable) as refused:
        limiter.try_acquire(checks, 0)
    assert "hunter2secret" not in str(refused.value) and "someone:***@127.0.0.1" in str(refused.value)


def test_four_processes_share_one_exact_limit_on_postgres(tmp_path: Path, pg_url: str) -> None:
    results = hammer_limiter(tmp_path / "limits.db", 4.0, 120, 4, database=pg_url)
    stop = max(r["stop"] for r in results)
    admitted = sum(r["admitted"] for r in results)
    first = min(r["first"] for r in results if r["first"])
    last = max(r["last"] for r in results if r["last"])
    assert sum(r["asked"] for r in results) > 400  # hammered, not trickled
    # GCRA's bound over the span the admissions fall in (by the hosts' clocks: the database's runs alike)
    assert admitted <= 4 + (last - first) * 2 + 1e-6, (admitted, last - first)
    assert admitted >= 4 + (stop - first) * 2 - 2.5, (admitted, stop - first)  # and nothing withheld
    assert stop - first > 1.0
