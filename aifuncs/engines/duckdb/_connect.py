"""A DuckDB connection bound to a session: `connect`, `install` and the session each database instance acts in."""

from __future__ import annotations

import re
import weakref
from pathlib import Path
from typing import Any

import duckdb

from aifuncs._home import resource_dir
from aifuncs.engines.duckdb._system import (
    AUDIT_TYPE,
    ENDPOINTS_TYPE,
    PAYLOADS_TYPE,
    PERMISSIONS_TYPE,
    RUNS_TYPE,
    USAGE_TYPE,
    _audit_snapshot,
    _endpoints_snapshot,
    _payloads_snapshot,
    _permissions_snapshot,
    _runs_snapshot,
    _usage_snapshot,
)
from aifuncs.engines.duckdb._udfs import _generic_ai_query, _has_function, _registered_lock, _udf
from aifuncs.errors import ConfigError, DatabaseLocked
from aifuncs.governance import Identity, identify
from aifuncs.runtime import Runtime
from aifuncs.session import Session, open_session

_INSTALLED_MARK = "__aifuncs_ai_query"


def connect(
    database: str | Path = ":memory:",
    *,
    read_only: bool = False,
    token: str | None = None,
    session: Session | None = None,
    **config: Any,
) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection with aifuncs' functions and system views installed, acting as the principal of
    `token` (else of `AIFUNCS_TOKEN`, else the OS account that owns AIFUNCS_HOME), or in `session`."""
    try:
        con = duckdb.connect(str(database), read_only=read_only, config=config or {})
    except duckdb.IOException as error:
        locked = _LOCK_HOLDER.search(str(error))
        if locked is None:
            raise
        program, pid = Path(locked["program"]).name, locked["pid"]
        raise DatabaseLocked(
            f"The database {str(database)!r} is open in another process ({program}, PID {pid}), and DuckDB lets"
            " only one process use a database file while it may write. Close it there (con.close(), or end"
            " that notebook's kernel) and run this again."
        ) from None
    try:
        install(con, token=token, session=session)
    except BaseException:
        con.close()
        raise
    return con


# DuckDB's message when another process holds the file: "... Conflicting lock is held in <program> (PID n)".
_LOCK_HOLDER = re.compile(r"Conflicting lock is held in (?P<program>.*?) \(PID (?P<pid>\d+)\)")


def install(
    con: duckdb.DuckDBPyConnection,
    runtime: Runtime | None = None,
    *,
    token: str | None = None,
    identity: Identity | None = None,
    session: Session | None = None,
) -> duckdb.DuckDBPyConnection:
    """Install the generic AI functions, macros and system views on a connection (idempotent), bound to the
    principal of `token` (else of `AIFUNCS_TOKEN`, else the OS account that owns AIFUNCS_HOME).

    DuckDB keeps functions per database instance, which its cursors and every connection to the same file
    in this process share: one instance serves one principal, and asking another of it is an error.
    `identity`: one already authenticated (the server's request), instead of a token; `session`: the whole
    session the connection acts in (its runtime, identity and catalog)."""
    if session is not None:
        identity = session.identity
    if _has_function(con, _INSTALLED_MARK):
        bound = identity_of(con)
        wanted = (
            identity.name if identity is not None else identify(token).name if token is not None else None
        )
        if wanted is not None and wanted != bound.name:
            raise ConfigError(
                f"This database is already open in this process as {bound.name!r}, and DuckDB shares one instance"
                " (and its functions) between the connections to a file: it cannot act as another principal too."
                " Close the other connections first, or open a copy of the file."
            )
        if not _has_function(con, "ai_query"):  # another connection to the file: the functions are shared,
            _install_sql(con)  # but macros and views are TEMP, each connection's own
        return con
    if session is None:
        session = open_session(token=token, identity=identity, runtime=runtime)
    identity = session.identity
    binding = f"{id(session):x}"  # one entry per session, gone with it (its functions hold it while open)
    with _registered_lock:
        _bindings[binding] = session
    # Plain (not Arrow) functions without side effects: DuckDB folds them into constants, once per query.
    con.create_function("__aifuncs_binding", lambda: binding, [], "VARCHAR", side_effects=False)
    con.create_function(
        "aifuncs_current_principal", lambda: identity.principal.name, [], "VARCHAR", side_effects=False
    )
    _udf(
        con,
        "__aifuncs_ai_query",
        _generic_ai_query(session),
        ["VARCHAR", "VARCHAR", "VARCHAR", "BOOLEAN", "VARCHAR", "VARCHAR", "BOOLEAN"],
        "VARCHAR",
    )
    _udf(con, "__aifuncs_endpoints", _endpoints_snapshot(session), [], ENDPOINTS_TYPE)
    _udf(con, "__aifuncs_usage", _usage_snapshot(session), [], USAGE_TYPE)
    _udf(con, "__aifuncs_runs", _runs_snapshot(identity), [], RUNS_TYPE)
    _udf(con, "__aifuncs_permissions", _permissions_snapshot(session), [], PERMISSIONS_TYPE)
    _udf(con, "__aifuncs_audit", _audit_snapshot(identity), [], AUDIT_TYPE)
    _udf(con, "__aifuncs_payloads", _payloads_snapshot(session), [], PAYLOADS_TYPE)
    _install_sql(con)
    return con


def _install_sql(con: duckdb.DuckDBPyConnection) -> None:
    """The `ai_query` macro and the system views: TEMP objects, which each connection holds for itself."""
    for script in ("functions.sql", "system_tables.sql"):
        con.execute((resource_dir("sql") / script).read_text())


# Who each database instance acts as, by the id its `__aifuncs_binding()` returns (connections and cursors
# of one instance are different Python objects: the instance's own function tells which it is).
_bindings: weakref.WeakValueDictionary[str, Session] = weakref.WeakValueDictionary()
_bound: weakref.WeakKeyDictionary[duckdb.DuckDBPyConnection, Session] = weakref.WeakKeyDictionary()


def identity_of(con: duckdb.DuckDBPyConnection) -> Identity:
    """The identity a connection (or a cursor, or another connection to its file) was installed as."""
    return session_of(con).identity


def session_of(con: duckdb.DuckDBPyConnection) -> Session:
    """The session a connection (or a cursor, or another connection to its file) was installed in."""
    with _registered_lock:
        found = _bound.get(con)
    if found is None:
        if not _has_function(con, _INSTALLED_MARK):
            install(con)
        ((binding,),) = con.execute("SELECT __aifuncs_binding()").fetchall()
        with _registered_lock:
            found = _bound[con] = _bindings[str(binding)]
    return found
