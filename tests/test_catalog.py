from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from pg import stored_database

import aifuncs
from aifuncs.errors import (
    ConfigError,
    EndpointExists,
    InvalidEndpointName,
    UnknownEndpoint,
    UnknownProviderKind,
)

pytestmark = pytest.mark.usefixtures("backend")  # each test on SQLite and on PostgreSQL


def test_create_get_list_delete() -> None:
    created = aifuncs.endpoints.create(
        "doubler", kind="python", function="sample_models:doubled", description="x2"
    )
    assert created.version == 1 and created.kind == "python"
    assert aifuncs.endpoints.get("doubler").options == {"function": "sample_models:doubled"}
    assert [e.name for e in aifuncs.endpoints.list()] == ["doubler"]
    aifuncs.endpoints.delete("doubler")
    assert aifuncs.endpoints.list() == []
    with pytest.raises(UnknownEndpoint):
        aifuncs.endpoints.delete("doubler")


def test_update_bumps_version_and_keeps_history() -> None:
    aifuncs.endpoints.create("m", kind="python", function="sample_models:doubled")
    updated = aifuncs.endpoints.update("m", returns="DOUBLE", description="now typed")
    assert updated.version == 2
    assert updated.options == {"function": "sample_models:doubled", "returns": "DOUBLE"}
    removed = aifuncs.endpoints.update("m", returns=None)
    assert removed.version == 3 and "returns" not in removed.options
    history = aifuncs.endpoints.versions("m")
    assert [v["version"] for v in history] == [1, 2, 3]
    assert history[1]["options"]["returns"] == "DOUBLE"


@pytest.mark.parametrize("name", ["", "1abc", "has space", "semi;colon", "x" * 129, "quote'd"])
def test_invalid_names_are_refused(name: str) -> None:
    with pytest.raises(InvalidEndpointName, match="Invalid endpoint name"):
        aifuncs.endpoints.create(name, kind="python", function="sample_models:doubled")


def test_duplicate_name_is_refused_case_insensitively() -> None:
    aifuncs.endpoints.create("Churn", kind="python", function="sample_models:doubled")
    with pytest.raises(EndpointExists, match="already exists"):
        aifuncs.endpoints.create("churn", kind="python", function="sample_models:doubled")


def test_unknown_endpoint_suggests_close_names() -> None:
    aifuncs.endpoints.create("churn-model", kind="python", function="sample_models:doubled")
    with pytest.raises(UnknownEndpoint, match="Did you mean 'churn-model'"):
        aifuncs.endpoints.get("churn-modle")


def test_secrets_are_refused_and_env_names_accepted() -> None:
    with pytest.raises(ConfigError, match="environment variable"):
        aifuncs.endpoints.create(
            "llm", kind="python", function="sample_models:doubled", api_key="sk-live-123"
        )
    kept = Path(os.environ["AIFUNCS_HOME"]) / "catalog.db"
    assert b"sk-live-123" not in (kept.read_bytes() if kept.exists() else b"") + stored_database()


def test_options_are_validated_against_the_kind() -> None:
    with pytest.raises(ConfigError, match=r"model_urii.*Accepted options: .*model_uri"):
        aifuncs.endpoints.create("m", kind="mlflow", model_urii="models:/x/1")
    with pytest.raises(ConfigError, match="function"):
        aifuncs.endpoints.create("m", kind="python", function="not a target")
    with pytest.raises(UnknownProviderKind, match="Installed kinds: .*mlflow.*python"):
        aifuncs.endpoints.create("m", kind="nonesuch")


def test_a_second_process_sees_the_same_catalog() -> None:
    aifuncs.endpoints.create("mine", kind="python", function="sample_models:doubled")
    script = (
        "import aifuncs; print([e.name for e in aifuncs.endpoints.list()]);"
        " aifuncs.endpoints.create('theirs', kind='python', function='sample_models:doubled')"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, env=os.environ
    )
    assert out.stdout.strip() == "['mine']"
    assert aifuncs.endpoints.get("theirs").version == 1


def test_sql_view_is_read_fresh_on_every_query(con) -> None:  # type: ignore[no-untyped-def]
    assert con.sql("SELECT count(*) FROM aifuncs_endpoints").fetchall() == [(0,)]
    aifuncs.endpoints.create("m", kind="python", function="sample_models:doubled", returns="DOUBLE")
    aifuncs.endpoints.update("m", description="second")
    rows = con.sql("SELECT name, kind, version, description, options FROM aifuncs_endpoints").fetchall()
    assert rows == [
        ("m", "python", 2, "second", '{"function": "sample_models:doubled", "returns": "DOUBLE"}')
    ]


def test_kept_connections_roll_back_a_failed_write_and_stay_usable(tmp_path: Path) -> None:
    import threading

    from aifuncs.catalog._store import SqliteStore

    store = SqliteStore(tmp_path / "catalog.db")
    with pytest.raises(RuntimeError), store._write() as db:
        db.execute("INSERT INTO defaults VALUES ('chat', 'half-done')")
        raise RuntimeError("failed half-way")
    assert store.default("chat") is None  # rolled back, not left open on the kept connection
    store.set_default("chat", "done")
    seen: list[str | None] = []
    reader = threading.Thread(target=lambda: seen.append(store.default("chat")))  # its own connection
    reader.start()
    reader.join()
    assert seen == ["done"]
    other = SqliteStore(tmp_path / "catalog.db")  # another connection (as another process would hold)
    other.set_default("chat", "changed")
    assert store.default("chat") == "changed"  # the kept connection reads what others commit


def test_a_forked_child_uses_a_connection_of_its_own(tmp_path: Path, backend: str) -> None:
    if backend != "sqlite":
        pytest.skip(
            "the SQLite file's kept connections (the shared database's are per process: storage/_postgres)"
        )
    from forking import run_forking

    done = run_forking(
        f"""
        from pathlib import Path
        from aifuncs.catalog._store import SqliteStore

        store = SqliteStore(Path({str(tmp_path / "catalog.db")!r}))
        store.set_default("chat", "parent")  # the parent's kept connection exists now
        kept = store._local.values.db

        def child():
            assert store.default("chat") == "parent"
            assert store._local.values.db is not kept
            store.set_default("chat", "child")

        print("child exit", in_a_forked_child(child))
        print("parent reads", store.default("chat"), store._local.values.db is kept)
        """
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[:2] == ["child exit 0", "parent reads child True"]
