"""The run ledger: one row per job run in AIFUNCS_HOME/runs.db, written when it starts and when it ends.

A run killed outright cannot write its end: its row stays "running" until the next run of the same job
(which holds the job's lock, so the old one is surely gone) marks it "interrupted"; readers meanwhile
show a "running" row whose process is gone on this host as interrupted too.
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aifuncs._home import home, private_file
from aifuncs._wal import add_columns

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    job TEXT NOT NULL,           -- the job file's name, without .sql
    job_key TEXT NOT NULL,       -- file, parameters, database and output: what makes two runs the same job
    path TEXT NOT NULL,
    params TEXT NOT NULL,        -- JSON object
    db TEXT NOT NULL,
    output TEXT,
    status TEXT NOT NULL,        -- running, succeeded, failed, interrupted
    exit_code INTEGER,
    started_at TEXT NOT NULL,
    ended_at TEXT,
    rows INTEGER NOT NULL DEFAULT 0,        -- rows answered by AI functions
    failed_rows INTEGER NOT NULL DEFAULT 0, -- ...of which with an error instead of an answer
    requests INTEGER NOT NULL DEFAULT 0,    -- model requests sent
    tokens INTEGER NOT NULL DEFAULT 0,
    cost_usd REAL NOT NULL DEFAULT 0,
    output_rows INTEGER,
    resumed_from INTEGER,                   -- the earlier run whose checkpoint this one used
    checkpoint_answers INTEGER NOT NULL DEFAULT 0, -- answers found in that checkpoint at the start
    error TEXT,
    pid INTEGER NOT NULL,
    host TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS runs_by_job ON runs(job_key, id);
"""

COLUMNS = (
    "id", "job", "job_key", "path", "params", "db", "output", "status", "exit_code", "started_at", "ended_at",
    "rows", "failed_rows", "requests", "tokens", "cost_usd", "output_rows", "resumed_from", "checkpoint_answers",
    "error", "pid", "host", "principal",
)  # fmt: skip


def ledger_path() -> Path:
    return home() / "runs.db"


@contextmanager
def _db() -> Iterator[sqlite3.Connection]:
    db = sqlite3.connect(private_file(ledger_path()), timeout=30)
    try:
        db.executescript(_SCHEMA)
        add_columns(db, "runs", {"principal": "TEXT"})  # who ran it; older ledgers gain it empty
        with db:
            yield db
    finally:
        db.close()


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def start(
    job: str,
    job_key: str,
    path: str,
    params: dict[str, str],
    db: str,
    output: str | None,
    principal: str | None = None,
) -> int:
    """Record a run that begins (the caller holds the job's lock), and who runs it; returns its id."""
    with _db() as con:
        con.execute(
            "UPDATE runs SET status = 'interrupted', ended_at = coalesce(ended_at, ?),"
            " error = coalesce(error, 'the process ended without finishing (killed?)')"
            " WHERE job_key = ? AND status = 'running'",
            (now(), job_key),
        )
        cursor = con.execute(
            "INSERT INTO runs (job, job_key, path, params, db, output, status, started_at, pid, host, principal)"
            " VALUES (?, ?, ?, ?, ?, ?, 'running', ?, ?, ?, ?)",
            (
                job,
                job_key,
                path,
                json.dumps(params, sort_keys=True),
                db,
                output,
                now(),
                os.getpid(),
                _host(),
                principal,
            ),  # fmt: skip
        )
        return int(cursor.lastrowid or 0)


def update(run_id: int, **values: Any) -> None:
    unknown = set(values) - set(COLUMNS)
    assert not unknown, unknown
    names = ", ".join(f"{name} = ?" for name in values)
    with _db() as con:
        con.execute(f"UPDATE runs SET {names} WHERE id = ?", (*values.values(), run_id))


def last_unfinished(job_key: str, before: int) -> int | None:
    """The latest earlier run of the job that did not succeed: the one a checkpoint is left from."""
    with _db() as con:
        row = con.execute(
            "SELECT id FROM runs WHERE job_key = ? AND id < ? AND status != 'succeeded' ORDER BY id DESC LIMIT 1",
            (job_key, before),
        ).fetchone()
    return None if row is None else int(row[0])


def runs(
    job: str | None = None, limit: int | None = None, principal: str | None = None
) -> list[dict[str, Any]]:
    """Runs, newest first (of one job, by name or file path, when given; only `principal`'s, when given)."""
    query = f"SELECT {', '.join(COLUMNS)} FROM runs WHERE 1 = 1"
    args: list[Any] = []
    if job is not None:
        query += " AND (job = ? OR path = ?)"
        args += [job, job]
    if principal is not None:
        query += " AND principal = ?"
        args.append(principal)
    query += " ORDER BY id DESC"
    if limit is not None:
        query += " LIMIT ?"
        args.append(limit)
    if not ledger_path().exists():
        return []
    with _db() as con:
        rows = [dict(zip(COLUMNS, r, strict=True)) for r in con.execute(query, args)]
    for row in rows:
        row["params"] = json.loads(row["params"])
        if row["status"] == "running" and row["host"] == _host() and not _alive(row["pid"]):
            row["status"] = "interrupted"
    return rows


def get(run_id: int) -> dict[str, Any] | None:
    found = [r for r in runs() if r["id"] == run_id] if ledger_path().exists() else []
    return found[0] if found else None


def _host() -> str:
    return socket.gethostname()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
