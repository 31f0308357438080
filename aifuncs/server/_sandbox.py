"""The sandbox one statement over HTTP runs in, and the bounds the operator sets on it.

A sandbox is a DuckDB database of its own, in memory, with the warehouse attached read-only, the AI functions
bound to the caller, a memory limit, a few threads, and a temp folder of its own (private to this process's
user, removed with the sandbox): DuckDB's default (`.tmp` in the server's working directory) would be one
folder that every caller's statement may read and write. Then the sandbox is locked: no file outside that
temp folder, nothing attached, no extension installed, no setting changed back.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import duckdb
import sqlglot
from sqlglot import exp
from sqlglot.tokens import TokenType

from aifuncs.engines.duckdb import install
from aifuncs.errors import ConfigError, SqlError
from aifuncs.session import Session

__all__ = ["DIALECTS", "Limits", "Sandbox", "refuse_reserved"]

DIALECTS = ("databricks", "duckdb")
_SIZE = re.compile(r"\s*\d+(\.\d+)?\s*(B|KB|MB|GB|TB|KiB|MiB|GiB|TiB)\s*", re.IGNORECASE)


@dataclass(frozen=True)
class Limits:
    """What one statement, and one principal's statements, may take of the server."""

    timeout_s: float = 900.0  # a statement still running then is interrupted
    memory: str = "1GB"  # DuckDB's memory_limit per statement (beyond it, DuckDB spills to the temp folder)
    temp_size: str = "8GB"  # DuckDB's max_temp_directory_size per statement
    threads: int = max(1, min(4, os.cpu_count() or 1))  # DuckDB threads per statement
    per_principal: int = 4  # statements one principal may have pending or running at once
    slots: int = max(2, min(8, os.cpu_count() or 2))  # statements running at once in a process
    result_bytes: int = 25 * 1024 * 1024  # one result (as Databricks' INLINE): beyond it, FAILED
    kept_s: float = 3600.0  # a finished statement's result is kept this long, then closed
    kept_bytes: int = 100 * 1024 * 1024  # the results one principal may keep at once (oldest closed first)
    kept_count: int = 256  # the statements one principal may keep at once (oldest finished forgotten first)

    def __post_init__(self) -> None:
        if not self.timeout_s > 0:
            raise ConfigError(
                f"The statement time limit is a number of seconds above 0, not {self.timeout_s}."
            )
        for name, value in (("memory", self.memory), ("temp size", self.temp_size)):
            if not _SIZE.fullmatch(value):
                raise ConfigError(
                    f"The statement {name} {value!r} is not a size: write it as DuckDB does, e.g. '2GB' or '512MB'."
                )
        if self.per_principal < 1 or self.slots < 1 or self.threads < 1:
            raise ConfigError("Statements per principal, slots and threads are whole numbers from 1.")
        if self.result_bytes < 1024:
            raise ConfigError(f"The result size limit is at least 1 KB, not {self.result_bytes} bytes.")

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> Limits:
        """The limits `aifuncs serve` hands its workers (AIFUNCS_SERVE_STATEMENT_*), defaults elsewhere."""
        given: dict[str, object] = {}
        for key, name, kind in (
            ("AIFUNCS_SERVE_STATEMENT_TIMEOUT_S", "timeout_s", float),
            ("AIFUNCS_SERVE_STATEMENT_MEMORY", "memory", str),
            ("AIFUNCS_SERVE_STATEMENT_CONCURRENCY", "per_principal", int),
            ("AIFUNCS_SERVE_STATEMENT_RESULT_MB", "result_bytes", int),
        ):
            text = environ.get(key)
            if not text:
                continue
            try:
                value = kind(text)
            except ValueError:
                raise ConfigError(f"{key}={text!r} is not a {kind.__name__}.") from None
            given[name] = value * 1024 * 1024 if name == "result_bytes" else value
        return cls(**given)  # type: ignore[arg-type]


class Sandbox:
    """One statement's DuckDB database, its AI functions bound to the caller's `session` (its runtime, catalog
    and identity); `close()` ends it and removes its temp folder."""

    def __init__(self, warehouse: Path | None, session: Session, limits: Limits) -> None:
        self.temp = Path(tempfile.mkdtemp(prefix="aifuncs-statement-"))  # mode 0700: this process's user only
        try:
            self.con = duckdb.connect(":memory:", config={"threads": limits.threads})
            try:
                _lock(self.con, warehouse, session, limits, self.temp)
            except BaseException:
                self.con.close()
                raise
        except BaseException:
            shutil.rmtree(self.temp, ignore_errors=True)
            raise

    def interrupt(self) -> None:
        with contextlib.suppress(duckdb.Error):  # closed meanwhile: nothing left to stop
            self.con.interrupt()

    def close(self) -> None:
        with contextlib.suppress(duckdb.Error):
            self.con.close()
        shutil.rmtree(self.temp, ignore_errors=True)


def _quoted(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _lock(
    con: duckdb.DuckDBPyConnection, warehouse: Path | None, session: Session, limits: Limits, temp: Path
) -> None:
    # Paths and sizes here come from the operator and mkdtemp, never from a request.
    if warehouse is not None:
        con.execute(f"ATTACH {_quoted(str(warehouse))} AS warehouse (READ_ONLY)")
        con.execute("USE warehouse")
    # The AI functions bound to the caller, before the sandbox is locked: a session of its own on the request's
    # runtime, catalog and identity, as SQL anywhere has (origin "sql"; rate limits waited out within the
    # statement's time limit).
    install(con, session=Session(session.runtime, session.identity, session.base_catalog))
    con.execute(f"SET memory_limit = {_quoted(limits.memory)}")
    con.execute(f"SET temp_directory = {_quoted(str(temp))}")
    con.execute(f"SET max_temp_directory_size = {_quoted(limits.temp_size)}")
    con.execute("SET allowed_directories = []")  # DuckDB still allows its temp folder: this session's own
    con.execute("SET enable_external_access = false")
    con.execute("SET lock_configuration = true")


_DDL = {TokenType.CREATE, TokenType.DROP, TokenType.ALTER, TokenType.COMMENT, TokenType.RENAME}
_REFUSED = (
    "Names starting with aifuncs_ or __aifuncs_ belong to aifuncs' own functions and views, which are bound to"
    " the caller's principal; SQL over HTTP may not create, drop, alter or rename them. Choose another name."
)


def _reserved(name: str) -> bool:
    return name.lower().lstrip("_").startswith("aifuncs_")


def refuse_reserved(text: str, dialect: str) -> None:
    """Refuse a statement that defines, drops, alters or renames anything named aifuncs_*, read from its parse
    tree (so comments and quoting change nothing). The caller's dialect decides; what sqlglot reads there only
    as a command reaches DuckDB as written, so DuckDB's reading decides that."""
    verdict = _verdict(text, dialect)
    if verdict == "refused" or (
        verdict == "unclear" and (dialect == "duckdb" or _verdict(text, "duckdb") != "clear")
    ):
        raise SqlError(_REFUSED)


def _verdict(text: str, dialect: str) -> str:
    verdicts = {_names_reserved(tokens, dialect) for tokens in _statements(text, dialect)}
    return "refused" if "refused" in verdicts else "unclear" if "unclear" in verdicts else "clear"


def _statements(text: str, dialect: str) -> Iterator[list[sqlglot.tokens.Token]]:
    try:
        tokens = sqlglot.Dialect.get_or_raise(dialect).tokenize(text)
    except sqlglot.errors.TokenError:
        # Not SQL sqlglot can read: judged on the words alone (DuckDB would most likely refuse it anyway).
        words = text.lower()
        if "aifuncs_" in words and any(w in words for w in ("create", "drop", "alter", "rename", "comment")):
            raise SqlError(_REFUSED) from None
        return
    piece: list[sqlglot.tokens.Token] = []
    for token in tokens:
        if token.token_type == TokenType.SEMICOLON:
            if piece:
                yield piece
            piece = []
        else:
            piece.append(token)
    if piece:
        yield piece


def _names_reserved(tokens: list[sqlglot.tokens.Token], dialect: str) -> str:
    """clear, refused (its tree names aifuncs_* as what it defines or changes), or unclear (DDL that names
    aifuncs_* somewhere and that sqlglot reads only as a command, or not at all)."""
    if not any(t.token_type in _DDL for t in tokens):
        return "clear"  # queries may call aifuncs' functions freely
    if not any(_reserved(t.text) for t in tokens):  # any token: a dialect may read "x" as a string
        return "clear"
    try:
        tree = sqlglot.Dialect.get_or_raise(dialect).parser().parse(tokens, sql="")[0]
    except sqlglot.errors.SqlglotError:
        return "unclear"
    if isinstance(tree, (exp.Drop, exp.Alter, exp.Comment)):
        return "refused"  # any aifuncs_ name in them is what they drop, alter, rename or comment on
    if not isinstance(tree, exp.Create):
        return "unclear"
    target = tree.this
    names = [target, *target.find_all(exp.Identifier)] if isinstance(target, exp.Expression) else []
    return "refused" if any(isinstance(n, exp.Identifier) and _reserved(n.name) for n in names) else "clear"
