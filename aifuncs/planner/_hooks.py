"""What the planner reads from an engine (`EngineHooks`) and what it hands back (`PlannedStatement`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aifuncs.catalog import Catalog, default_catalog
from aifuncs.planner._bulk import Prescore, TableShape
from aifuncs.runtime import CallSpec, Runtime, default_runtime
from aifuncs.session import Session


@dataclass(frozen=True)
class EngineHooks:
    """What the planner needs from an engine, and nothing more."""

    describe: Callable[[str], str]  # a one-column query -> the DuckDB type of its column
    evaluate: Callable[[str], Any]  # a constant expression -> its value as Python
    register: Callable[[CallSpec, str | None], str]  # call, request type (None: JSON) -> function name
    is_table: Callable[[str], bool] = lambda name: False  # a base table, scanned in the same order each time
    volatile: frozenset[str] = frozenset()  # functions whose value changes per call (random, nextval...)
    shape: Callable[[str], TableShape | None] = lambda name: None  # a base table's columns and rows
    # A vector index by name; None where the engine keeps none (vector_search is refused there).
    vector_index: Callable[[str], VectorIndex | None] | None = None
    # Who the query runs as, on which runtime, with which meters, usage labels and checkpoint; None (planner
    # tests only): this process's runtime and identity.
    session: Session | None = None
    dialect: str = "duckdb"  # the SQL the engine reads: the planner writes statements and probes in it
    name: str = "DuckDB"  # the engine, as errors name it
    cosine_similarity: str = "list_cosine_similarity"  # the engine's function of two float arrays
    bulk: bool = True  # scoring queries may score whole columns ahead (DuckDB's POSITIONAL JOIN: `_bulk.py`)

    def catalog(self) -> Catalog:
        """The catalog as the query's principal sees it."""
        return default_catalog() if self.session is None else self.session.catalog

    def runtime(self) -> Runtime:
        return default_runtime() if self.session is None else self.session.runtime


@dataclass(frozen=True)
class VectorIndex:
    """A vector index as the planner reads it: a table of rows and their embeddings, and who embedded them."""

    table: str  # SQL name of the table
    embedding_column: str
    endpoint: str


@dataclass(frozen=True)
class CallSite:
    """One AI call of a statement, as EXPLAIN shows it."""

    text: str  # the call as written (in the engine's SQL)
    call: CallSpec
    probe: str | None  # a query whose one column is the request, over the call's scope; None when unknown
    request_type: str | None  # DuckDB DDL of the request (None: passed as JSON)
    bulk: bool  # scored ahead of the statement (the bulk path) rather than streamed through a UDF


@dataclass(frozen=True)
class PlannedStatement:
    """One statement to run: its SQL in the engine's dialect, the columns to score before it (the bulk
    path), its AI calls."""

    sql: str
    prescores: tuple[Prescore, ...] = field(default=())
    calls: tuple[CallSite, ...] = field(default=())
