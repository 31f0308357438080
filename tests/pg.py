"""A throwaway PostgreSQL 15 cluster for the tests: made with initdb in a temp folder, listening on a free port
on 127.0.0.1 (password auth), once per test session and stopped at its end. As root the server runs as the
`postgres` user (PostgreSQL refuses root), which is given the folder. Each test that asks gets a database of
its own (`pg_url`), dropped afterwards."""

from __future__ import annotations

import contextlib
import itertools
import os
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from servers import free_port

BIN = Path("/usr/lib/postgresql/15/bin")
USER = "aifuncs_test"


@dataclass(frozen=True)
class Cluster:
    port: int
    password: str
    folder: Path
    options: str = ""  # the server's command-line options, for a start after a stop

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{USER}:{self.password}@127.0.0.1:{self.port}/{database}"

    def _ctl(self, *args: str) -> None:
        subprocess.run(
            _as_server_user([str(BIN / "pg_ctl"), "-D", str(self.folder / "data"), "-l",
                             str(self.folder / "server.log"), *args]),
            check=True, capture_output=True, env={**os.environ, "LC_ALL": "C.UTF-8"},
        )  # fmt: skip

    def stop(self) -> None:
        """Stop the server as an operator's restart does (`-m fast`: sessions cut, work rolled back)."""
        self._ctl("-m", "fast", "-w", "-t", "60", "stop")

    def start(self) -> None:
        self._ctl("-o", self.options, "-w", "-t", "60", "start")


def _as_server_user(command: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else command


@contextlib.contextmanager
def cluster() -> Iterator[Cluster]:
    if not (BIN / "initdb").exists():
        raise RuntimeError(
            f"PostgreSQL 15 is missing ({BIN}/initdb): make test-servers installs it"
            " (apt-get install postgresql)."
        )
    folder = Path(tempfile.mkdtemp(prefix="aifuncs-pg-"))
    password = secrets.token_hex(12)
    data = folder / "data"
    pwfile = folder / "pw"
    pwfile.write_text(password + "\n")
    if os.geteuid() == 0:
        shutil.chown(folder, "postgres", "postgres")
        shutil.chown(pwfile, "postgres", "postgres")
    port = free_port()
    env = {**os.environ, "LC_ALL": "C.UTF-8"}
    subprocess.run(
        _as_server_user([str(BIN / "initdb"), "-D", str(data), "-U", USER, f"--pwfile={pwfile}",
                         "--auth=scram-sha-256", "-E", "UTF8", "--no-sync"]),
        check=True, capture_output=True, env=env,
    )  # fmt: skip
    options = (
        f"-p {port} -c listen_addresses=127.0.0.1 -k {folder} -c fsync=off -c full_page_writes=off"
        " -c synchronous_commit=off -c max_connections=300"
    )
    log = folder / "server.log"
    subprocess.run(
        _as_server_user([str(BIN / "pg_ctl"), "-D", str(data), "-l", str(log), "-o", options, "-w", "-t", "60",
                         "start"]),
        check=True, capture_output=True, env=env,
    )  # fmt: skip
    try:
        yield Cluster(port, password, folder, options)
    finally:
        subprocess.run(
            _as_server_user([str(BIN / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"]),
            capture_output=True, env=env,
        )  # fmt: skip
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[Cluster]:
    with cluster() as running:
        yield running


_numbers = itertools.count()


@pytest.fixture
def pg_url(pg_cluster: Cluster) -> Iterator[str]:
    """A fresh, empty database on the session's cluster: its URL (with the password)."""
    import psycopg

    name = f"t{os.getpid()}_{next(_numbers)}"
    with psycopg.connect(pg_cluster.url(), autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')  # a name made here, never a user's value
    url = pg_cluster.url(name)
    yield url
    from aifuncs.storage import forget

    forget(url)
    with psycopg.connect(pg_cluster.url(), autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run a test once on each backend: SQLite files under the home, then a fresh PostgreSQL database named by
    AIFUNCS_DATABASE_URL."""
    if request.param == "postgresql":
        monkeypatch.setenv("AIFUNCS_DATABASE_URL", request.getfixturevalue("pg_url"))
    else:
        monkeypatch.delenv("AIFUNCS_DATABASE_URL", raising=False)
    return str(request.param)


def stored_database() -> bytes:
    """Every row of every table in the shared database AIFUNCS_DATABASE_URL names, as text (b"" when unset):
    what a test that looks for a secret in the home's files must look through too."""
    url = os.environ.get("AIFUNCS_DATABASE_URL")
    if not url:
        return b""
    import psycopg
    from psycopg import sql

    with psycopg.connect(url) as conn:
        tables = [r[0] for r in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")]
        rows = [
            conn.execute(sql.SQL("SELECT * FROM {}").format(sql.Identifier(t))).fetchall() for t in tables
        ]
    assert tables, "the shared database has no tables"
    return repr(rows).encode()
