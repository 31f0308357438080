"""The storage seam on PostgreSQL: migrations once, whoever starts at once; SQL written for SQLite runs as
written; an unreachable database is one clear error without its password."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import psycopg
import pytest
from pg import Cluster

from aifuncs.errors import DatabaseUnreachable
from aifuncs.storage import Postgres, redact, shared
from aifuncs.storage._migrate import migrate, migrations


def test_migrations_apply_once_when_processes_start_together(pg_url: str) -> None:
    # eight processes open the database at the same moment: each version applied once, the schema whole
    script = (
        "import sys\n"
        "from aifuncs.storage import Postgres\n"
        "db = Postgres(sys.argv[1])\n"
        "with db.transaction('catalog') as c:\n"
        "    print(c.execute('SELECT count(*) FROM endpoints').fetchone()[0])\n"
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script, pg_url], stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        for _ in range(8)
    ]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0] * 8, [e.decode() for _, e in outs]
    assert [o.decode().strip() for o, _ in outs] == ["0"] * 8
    with psycopg.connect(pg_url) as conn:
        rows = conn.execute("SELECT version, name FROM aifuncs_schema_version ORDER BY version").fetchall()
        again = migrate(conn)
    assert rows == [(m.version, m.name) for m in migrations()]
    assert again == []  # nothing left to apply


def test_a_failing_migration_leaves_no_trace(pg_url: str) -> None:
    from aifuncs.storage._migrate import Migration

    steps = [Migration(1, "good", "CREATE TABLE a (x INT)"), Migration(2, "bad", "CREATE TABLE b (x NOPE)")]
    with psycopg.connect(pg_url, autocommit=True) as conn:
        with pytest.raises(psycopg.Error):
            migrate(conn, steps)
        found = conn.execute("SELECT to_regclass('a'), to_regclass('aifuncs_schema_version')").fetchone()
    assert found == (None, None)  # all of it rolled back, as one


def test_sql_written_for_sqlite_runs_on_postgresql(pg_url: str) -> None:
    db = Postgres(pg_url)
    with db.transaction("catalog") as c:
        c.execute(
            "INSERT INTO endpoints VALUES (?, ?, ?, ?, 1, ?, ?)",
            ("Mixed", "python", "{}", "50% off", "t", "t"),
        )
        c.executemany(
            "INSERT INTO tags (name, key, value) VALUES (?, ?, ?)",
            [("mixed", "a", "1"), ("MIXED", "b", None)],
        )
    reader = db.reader()
    row = reader.execute("SELECT * FROM endpoints WHERE name = ?", ("mIXED",)).fetchone()
    assert row["name"] == "Mixed" and row[3] == "50% off" and dict(row)["kind"] == "python"
    assert (
        reader.execute("SELECT count(*) FROM tags WHERE name = 'mixed' AND ? IS NULL", (None,)).fetchone()[0]
        == 2
    )
    assert reader.execute("SELECT '?' || ?", ("x",)).fetchone()[0] == "?x"  # a quoted ? is text
    db.close()


def test_writers_of_one_store_take_turns(pg_url: str) -> None:
    # read-then-write under the store's turn, from many threads: no update lost (what BEGIN IMMEDIATE gives)
    db = Postgres(pg_url)
    with db.transaction("catalog") as c:
        c.execute("INSERT INTO revision (id, value) VALUES (1, 0)")

    def bump() -> None:
        for _ in range(25):
            with db.transaction("catalog", immediate=True) as c:
                value = c.execute("SELECT value FROM revision WHERE id = 1").fetchone()[0]
                c.execute("UPDATE revision SET value = ? WHERE id = 1", (value + 1,))

    threads = [threading.Thread(target=bump) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert db.reader().execute("SELECT value FROM revision").fetchone()[0] == 150
    db.close()


def test_a_read_inside_a_write_does_not_wait_for_it(pg_url: str) -> None:
    # a store reads through another transaction while its own holds the store's turn (a grant checks its
    # principal inside the endpoint's creation): reads take no turn, so nothing waits on itself
    db = Postgres(pg_url)
    with db.transaction("catalog") as outer:
        outer.execute("INSERT INTO principals VALUES ('p', 'user', 0, 't')")
        with db.transaction("catalog") as inner:
            assert inner.execute("SELECT count(*) FROM principals").fetchone()[0] == 0  # not committed yet
    assert db.reader().execute("SELECT count(*) FROM principals").fetchone()[0] == 1
    db.close()


def test_the_audit_log_is_append_only(pg_url: str) -> None:
    db = Postgres(pg_url)
    with db.transaction("catalog") as c:
        c.execute("INSERT INTO audit (id, ts, actor, action, target, details, prev_hash, hash)"
                  " VALUES (1, 't', 'a', 'x', 'y', '{}', ?, ?)", (b"0", b"1"))  # fmt: skip
    for change in ("UPDATE audit SET actor = 'mallory'", "DELETE FROM audit"):
        with pytest.raises(psycopg.Error, match="append-only"), db.transaction("catalog") as c:
            c.execute(change)
    assert db.reader().execute("SELECT actor FROM audit").fetchall() == [("a",)]
    db.close()


def test_an_unreachable_database_is_one_clear_error_without_its_password(pg_cluster: Cluster) -> None:
    dead = f"postgresql://someone:hunter2secret@127.0.0.1:{pg_cluster.port + 1 if pg_cluster.port < 65535 else 1}/x"
    with pytest.raises(DatabaseUnreachable) as caught:
        Postgres(dead).pool()
    message = str(caught.value)
    assert "hunter2secret" not in message
    assert "postgresql://someone:***@127.0.0.1" in message and "AIFUNCS_DATABASE_URL" in message
    wrong = pg_cluster.url().replace(pg_cluster.password, "wrong-password-xyz")
    with pytest.raises(DatabaseUnreachable) as caught:
        Postgres(wrong).pool()
    assert "wrong-password-xyz" not in str(caught.value) and "password authentication failed" in str(
        caught.value
    )


def test_the_cli_names_the_database_without_its_password(pg_cluster: Cluster, tmp_path: Path) -> None:
    dead = f"postgresql://someone:hunter2secret@127.0.0.1:{pg_cluster.port + 1}/x"
    done = subprocess.run(
        [sys.executable, "-m", "aifuncs.cli", "endpoints", "list"],
        capture_output=True, text=True, timeout=120,
        env={"PATH": "/usr/bin:/bin", "AIFUNCS_HOME": str(tmp_path / "h"), "AIFUNCS_DATABASE_URL": dead},
    )  # fmt: skip
    assert done.returncode != 0
    assert "hunter2secret" not in done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    assert "postgresql://someone:***@127.0.0.1" in done.stderr


def test_redact() -> None:
    assert (
        redact("postgresql://u:p%40ss@h:5/db?sslmode=require") == "postgresql://u:***@h:5/db?sslmode=require"
    )
    assert redact("postgresql://h/db?user=u&password=pw") == "postgresql://h/db?user=u&password=***"
    assert redact("postgresql://u@h/db") == "postgresql://u@h/db"


def test_only_a_postgresql_url_is_taken(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from aifuncs.errors import ConfigError

    monkeypatch.setenv("AIFUNCS_DATABASE_URL", "mysql://u:pw@h/db")
    with pytest.raises(ConfigError, match=r"postgresql://.*mysql://u:\*\*\*@h/db"):
        shared(tmp_path / "catalog.db")
    monkeypatch.delenv("AIFUNCS_DATABASE_URL")
    assert shared(tmp_path / "catalog.db") is None
