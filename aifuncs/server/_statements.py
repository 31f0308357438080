"""SQL over HTTP: Databricks' Statement Execution API running `aifuncs.sql` on the server's warehouse.

Each statement runs in a DuckDB database of its own, in memory, with the warehouse file attached read-only and
the sandbox locked before any of the caller's SQL runs: no file outside the warehouse can be read or written
(so not AIFUNCS_HOME), nothing attached, no extension installed, no setting changed back. Its AI functions
are bound to the caller's principal, so the policy check, limits, guardrails and logs hold as in SQL anywhere.
A statement answers within `wait_timeout` (10 s by default, at most 50 s); one still running then is polled
(`GET /api/2.0/sql/statements/{id}`), or cancelled. Statements are kept in the serving process for an hour and
visible only to whoever ran them (anyone else reads a missing one); with `--workers` above 1 a client should
wait for its answer in the first request, since a poll may reach another process.
"""

from __future__ import annotations

import json
import re
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from aifuncs.engines.duckdb import install, sql
from aifuncs.errors import AifuncsError
from aifuncs.governance import Identity
from aifuncs.jobs._params import markers, substitute
from aifuncs.server._errors import ApiError

__all__ = ["Statements"]

_KEPT_S = 3600.0
MAX_ROWS = 100_000  # inline rows of one answer (row_limit may lower it)
_TYPE_NAMES = {
    "BOOLEAN": "BOOLEAN", "TINYINT": "BYTE", "SMALLINT": "SHORT", "INTEGER": "INT", "BIGINT": "LONG",
    "HUGEINT": "DECIMAL", "FLOAT": "FLOAT", "DOUBLE": "DOUBLE", "VARCHAR": "STRING", "DATE": "DATE",
    "TIMESTAMP": "TIMESTAMP", "BLOB": "BINARY",
}  # fmt: skip


def _bad(message: str) -> ApiError:
    return ApiError(400, "INVALID_PARAMETER_VALUE", message)


def _type_name(ddl: str) -> str:
    upper = ddl.upper()
    for prefix, name in (
        ("DECIMAL", "DECIMAL"),
        ("STRUCT", "STRUCT"),
        ("MAP", "MAP"),
        ("TIMESTAMP", "TIMESTAMP"),
    ):
        if upper.startswith(prefix):
            return name
    if upper.endswith("]"):
        return "ARRAY"
    return _TYPE_NAMES.get(upper, "STRING")


def _text(value: Any) -> str | None:
    """Databricks' JSON_ARRAY holds every value as text (NULL as null)."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (dict, list)):
        return json.dumps(value, default=str)
    return str(value)


@dataclass
class Statement:
    id: str
    principal: str
    text: str
    state: str = "PENDING"  # PENDING | RUNNING | SUCCEEDED | FAILED | CANCELED | CLOSED
    error: str | None = None
    table: pa.Table | None = None
    truncated: bool = False
    connection: duckdb.DuckDBPyConnection | None = None
    done: threading.Event = field(default_factory=threading.Event)
    created: float = field(default_factory=time.monotonic)

    def response(self) -> dict[str, Any]:
        answer: dict[str, Any] = {"statement_id": self.id, "status": {"state": self.state}}
        if self.error is not None:
            answer["status"]["error"] = {"error_code": "BAD_REQUEST", "message": self.error}
        if self.state == "SUCCEEDED" and self.table is not None:
            answer["manifest"] = self.manifest()
            answer["result"] = self.chunk(0)
        return answer

    def manifest(self) -> dict[str, Any]:
        assert self.table is not None
        columns = [
            {"name": f.name, "type_name": _type_name(str(t)), "type_text": str(t), "position": i}
            for i, (f, t) in enumerate(zip(self.table.schema, self._ddl_types(), strict=True))
        ]
        rows = self.table.num_rows
        return {
            "format": "JSON_ARRAY",
            "schema": {"column_count": len(columns), "columns": columns},
            "total_row_count": rows,
            "total_chunk_count": 1,
            "chunks": [{"chunk_index": 0, "row_offset": 0, "row_count": rows}],
            "truncated": self.truncated,
        }

    def _ddl_types(self) -> list[str]:
        with duckdb.connect() as probe:  # DuckDB names Arrow types the way SQL users know them
            probe.register("t", self.table)
            return [str(row[1]) for row in probe.execute("DESCRIBE t").fetchall()]

    def chunk(self, index: int) -> dict[str, Any]:
        if index != 0 or self.table is None:
            raise ApiError(404, "RESOURCE_DOES_NOT_EXIST", f"Statement {self.id} has one chunk, 0.")
        rows = [[_text(v) for v in row.values()] for row in self.table.to_pylist()]
        return {"chunk_index": 0, "row_offset": 0, "row_count": len(rows), "data_array": rows}


class Statements:
    def __init__(self, warehouse: Path | None) -> None:
        self.warehouse = warehouse
        self._kept: dict[str, Statement] = {}
        self._lock = threading.Lock()

    def _session(self, identity: Identity) -> duckdb.DuckDBPyConnection:
        con = duckdb.connect(":memory:")
        if self.warehouse is not None:
            path = str(self.warehouse).replace("'", "''")
            con.execute(f"ATTACH '{path}' AS warehouse (READ_ONLY)")
            con.execute("USE warehouse")
        install(con, identity=identity)  # the AI functions bound to the caller, before the sandbox is locked
        con.execute("SET allowed_directories = []")
        con.execute("SET enable_external_access = false")
        con.execute("SET lock_configuration = true")
        return con

    def execute(self, identity: Identity, body: Any) -> dict[str, Any]:
        if (
            not isinstance(body, dict)
            or not isinstance(body.get("statement"), str)
            or not body["statement"].strip()
        ):
            raise _bad("Give the SQL as statement.")
        text = self._with_parameters(body)
        wait = _wait_s(body.get("wait_timeout", "10s"))
        on_timeout = str(body.get("on_wait_timeout", "CONTINUE")).upper()
        if on_timeout not in ("CONTINUE", "CANCEL"):
            raise _bad("on_wait_timeout is CONTINUE or CANCEL.")
        if body.get("format", "JSON_ARRAY") != "JSON_ARRAY" or body.get("disposition", "INLINE") != "INLINE":
            raise _bad("This server answers format JSON_ARRAY with disposition INLINE.")
        row_limit = body.get("row_limit")
        if row_limit is not None and (not isinstance(row_limit, int) or row_limit < 0):
            raise _bad("row_limit is a whole number of rows.")
        statement = Statement(uuid.uuid4().hex, identity.principal.name, text)
        self._forget_old()
        with self._lock:
            self._kept[statement.id] = statement
        statement.connection = self._session(identity)
        limit = min(row_limit if row_limit is not None else MAX_ROWS, MAX_ROWS)
        worker = threading.Thread(target=_run, args=(statement, str(body.get("dialect", "databricks")), limit),
                                  name="aifuncs-statement", daemon=True)  # fmt: skip
        statement.state = "RUNNING"
        worker.start()
        if not statement.done.wait(wait) and on_timeout == "CANCEL":
            self._cancel(statement)
            statement.done.wait(5)
        return statement.response()

    def _with_parameters(self, body: dict[str, Any]) -> str:
        text = str(body["statement"])
        given = body.get("parameters") or []
        if not isinstance(given, list) or not all(
            isinstance(p, dict) and isinstance(p.get("name"), str) for p in given
        ):
            raise _bad('parameters is a list of {"name": ..., "value": ..., "type": ...}.')
        values = {p["name"]: "" if p.get("value") is None else str(p["value"]) for p in given}
        used = {name for _, _, name in markers(text, "databricks")}
        if used - values.keys() or values.keys() - used:
            raise _bad(
                f"The statement's markers ({', '.join(sorted(used)) or 'none'}) and the parameters given"
                f" ({', '.join(sorted(values)) or 'none'}) differ: give one parameter for each :name."
            )
        return substitute(text, "databricks", values) if values else text

    def get(self, identity: Identity, statement_id: str) -> Statement:
        with self._lock:
            found = self._kept.get(statement_id)
        if found is None or found.principal != identity.principal.name:  # another's reads as missing
            raise ApiError(404, "RESOURCE_DOES_NOT_EXIST", f"There is no statement {statement_id}.")
        return found

    def cancel(self, identity: Identity, statement_id: str) -> None:
        self._cancel(self.get(identity, statement_id))

    def _cancel(self, statement: Statement) -> None:
        if not statement.done.is_set() and statement.connection is not None:
            statement.state = "CANCELED"
            statement.connection.interrupt()

    def _forget_old(self) -> None:
        now = time.monotonic()
        with self._lock:
            for key in [k for k, s in self._kept.items() if now - s.created > _KEPT_S]:
                del self._kept[key]


def _wait_s(text: Any) -> float:
    found = re.fullmatch(r"\s*(\d+)\s*s\s*", str(text))
    seconds = int(found.group(1)) if found else -1
    if seconds != 0 and not 5 <= seconds <= 50:
        raise _bad('wait_timeout is "0s", or between "5s" and "50s".')
    return float(seconds)


def _run(statement: Statement, dialect: str, limit: int) -> None:
    con = statement.connection
    assert con is not None
    try:
        relation = sql(con, statement.text, dialect=dialect, progress=False)
        table = relation.to_arrow_table() if relation is not None else pa.table({})
        statement.truncated = table.num_rows > limit
        statement.table = table.slice(0, limit)
        if statement.state != "CANCELED":
            statement.state = "SUCCEEDED"
    except (AifuncsError, duckdb.Error) as error:
        if statement.state != "CANCELED":
            statement.state, statement.error = "FAILED", str(error)
    finally:
        con.close()
        statement.connection = None
        statement.done.set()
