"""Tokens: recognisable, checksummed, kept only as a hash, shown once, revocable, expiring."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pg import stored_database

from aifuncs.errors import ConfigError
from aifuncs.governance import InvalidToken, TokenStore, check_format
from aifuncs.governance._sqlite import transaction

pytestmark = pytest.mark.usefixtures("backend")  # each test on SQLite and on PostgreSQL


@pytest.fixture
def store(tmp_path: Path) -> TokenStore:
    return TokenStore(tmp_path / "catalog.db")


def test_a_token_is_recognisable_and_checksummed(store: TokenStore) -> None:
    secret, token = store.create("alice")
    assert secret.startswith("aif_u_") and len(secret) == 42 and token.display == secret[:10] + "..."
    assert check_format(secret) == "user"
    assert check_format(store.create("etl-bot", kind="service_principal")[0]) == "service_principal"
    typo = secret[:20] + ("A" if secret[20] != "A" else "B") + secret[21:]
    with pytest.raises(InvalidToken, match="checksum"):
        check_format(typo)
    for bad in ("", "aif_u_short", "ghp_" + secret[4:], secret + "x", secret.replace("_u_", "_x_")):
        with pytest.raises(InvalidToken):
            check_format(bad)


def test_only_the_hash_is_kept_and_the_secret_never_shows(store: TokenStore) -> None:
    secret, _ = store.create("alice", comment="laptop")
    raw = store.path.read_bytes() if store.path.exists() else b""  # none: the shared database
    for sidecar in store.path.parent.glob(store.path.name + "-*"):
        raw += sidecar.read_bytes()
    raw += stored_database()
    assert secret.encode() not in raw and secret[10:].encode() not in raw
    listed = store.list("alice")
    assert [t.comment for t in listed] == ["laptop"]
    assert secret not in repr(listed) and secret not in repr(store)
    with transaction(store.path, "") as db:
        assert db.execute("SELECT count(*) FROM tokens WHERE display LIKE 'aif_u_%...'").fetchone()[0] == 1


def test_authenticate_names_the_principal_and_notes_the_use(store: TokenStore) -> None:
    secret, made = store.create("alice")
    assert made.last_used_at is None
    token = store.authenticate(secret)
    assert (token.principal, token.kind, token.id) == ("alice", "user", made.id)
    assert store.list()[0].last_used_at is not None
    other, _ = store.create("bob")
    assert store.authenticate(other).principal == "bob"


def test_unknown_revoked_and_expired_tokens_are_refused_without_echoing_them(store: TokenStore) -> None:
    secret, token = store.create("alice")
    unknown, _ = TokenStore(store.path.with_name("other.db")).create("alice")
    with pytest.raises(InvalidToken, match="Unknown token") as refused:
        store.authenticate(unknown)
    assert unknown not in str(refused.value)
    store.revoke(token.id)
    with pytest.raises(InvalidToken, match="revoked"):
        store.authenticate(secret)
    with pytest.raises(ConfigError, match="no token"):
        store.revoke(token.id)
    short, short_token = store.create("alice", days=1)
    with transaction(store.path, "") as db:  # a day later than its expiry
        past = (datetime.now(UTC) - timedelta(days=1)).isoformat()
        db.execute("UPDATE tokens SET expires_at = ? WHERE id = ?", (past, short_token.id))
    with pytest.raises(InvalidToken, match="expired"):
        store.authenticate(short)
    forever, _ = store.create("etl", kind="service_principal", days=None)
    assert store.authenticate(forever).expires_at is None


def test_bad_requests_name_the_problem(store: TokenStore) -> None:
    with pytest.raises(ConfigError, match="user or a service_principal"):
        store.create("alice", kind="group")
    with pytest.raises(ConfigError, match="positive number of days"):
        store.create("alice", days=0)
    with pytest.raises(ConfigError, match="needs the principal"):
        store.create("")


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    candidate=st.one_of(
        st.text(max_size=200),
        st.binary(max_size=200).map(lambda b: b.decode("latin-1")),
        st.from_regex(r"aif_[us]_[0-9A-Za-z]{36}", fullmatch=True),
        st.just("aif_u_" + "A" * 65536),
    )
)
def test_fuzzed_tokens_never_authenticate_and_fail_only_as_invalid(tmp_path: Path, candidate: str) -> None:
    store = TokenStore(tmp_path / "fuzz.db")
    with pytest.raises(InvalidToken) as refused:
        store.authenticate(candidate)
    assert candidate[:40] not in str(refused.value) or len(candidate) < 8  # never echoed back
