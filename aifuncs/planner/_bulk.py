"""The bulk path: score a whole column in large model calls before the query runs.

DuckDB hands a UDF 2,048 rows a call, and an in-process model (scikit-learn through MLflow, a
vectorized Python function) pays a fixed cost per call that dwarfs the work on 2,048 rows. For the
common shape of a scoring query,

    SELECT ..., ai_query('ep', request) ... FROM table [WHERE filter]     (also in CTAS and INSERT)

the planner instead emits a *prescore*: a query `SELECT CASE WHEN filter THEN request END FROM table`
that the engine streams through the runtime in big batches, and rewrites the call into a column of
that result, attached with `POSITIONAL JOIN` (DuckDB scans a base table in the same order each time).

Where the statement needs only a few fixed-width columns of the table besides the requests (`SELECT id,
ai_query(...) FROM t`), the prescore *carries* them instead: `SELECT id, request FROM table WHERE filter`,
and the statement reads everything from the prescored result. A POSITIONAL JOIN runs on one thread, so its
statement writes every row on one core (measured: 8.6 ms against 3.5 ms for the same 1M-row CREATE TABLE
from a parallel scan); carried columns cost an Arrow copy of those columns, bounded below.

Only where that scores exactly the rows the streaming UDF would: a base table (no join, sample or
table function), the call in the projection and outside any CASE, COALESCE or boolean operator, and
nothing above that could stop early or push a filter down (LIMIT, an outer query). The request and
the filter must be deterministic and free of other AI calls. Everything else streams.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

from sqlglot import exp

from aifuncs.functions import get_spec
from aifuncs.runtime import CallSpec

BULK_PREFIX = "__aifuncs_bulk_"
COLUMN_PREFIX = "__aifuncs_v"

# Carried columns: at most this many bytes a row, and this many bytes for the whole table.
_CARRY_ROW_BYTES = 32
_CARRY_TABLE_BYTES = 256 << 20
_FIXED_WIDTH = {
    "BOOLEAN": 1, "TINYINT": 1, "UTINYINT": 1, "SMALLINT": 2, "USMALLINT": 2, "INTEGER": 4, "UINTEGER": 4,
    "BIGINT": 8, "UBIGINT": 8, "HUGEINT": 16, "UHUGEINT": 16, "FLOAT": 4, "DOUBLE": 8, "DATE": 4, "TIME": 8,
    "TIMESTAMP": 8, "TIMESTAMP WITH TIME ZONE": 8, "TIMESTAMP_S": 8, "TIMESTAMP_MS": 8, "TIMESTAMP_NS": 8,
    "UUID": 16,
}  # fmt: skip


@dataclass(frozen=True)
class TableShape:
    """What the planner needs to know of a base table to carry its columns: their types and its size."""

    columns: dict[str, str]  # name -> DuckDB type, in the table's order
    rows: int


# Constructs that may skip evaluating a branch: a call under them must not be scored for every row.
_CONDITIONAL = (exp.Case, exp.If, exp.Coalesce, exp.Nullif, exp.And, exp.Or, exp.Filter, exp.Window)
# Clauses that change which rows a scope's projection sees, or how many.
_ROW_CHANGING = (
    "sample",
    "group",
    "having",
    "qualify",
    "limit",
    "offset",
    "fetch",
    "joins",
    "laterals",
    "pivots",
)


@dataclass(frozen=True)
class Prescore:
    """Columns to score before a statement runs, registered under `name`: attached by POSITIONAL JOIN, or,
    with carried columns, read by the statement in place of its table."""

    name: str
    source: str  # DuckDB SQL: the carried columns, then one column per call, rows in the table's scan order
    calls: tuple[CallSpec, ...]
    columns: tuple[str, ...]  # the calls' columns
    carried: tuple[str, ...] = ()  # the table's columns read along (the statement then reads only `name`)
    rows: int | None = None  # the rows `source` gives, where the planner knows (the table's count, no filter)


@dataclass
class _Scope:
    select: exp.Select
    alias: str
    requests: list[exp.Expr] = field(default_factory=list)
    calls: list[CallSpec] = field(default_factory=list)


class BulkPlanner:
    """Collects the bulk calls of one statement, then attaches their prescored columns."""

    def __init__(
        self,
        is_table: Callable[[str], bool],
        volatile: frozenset[str],
        shape: Callable[[str], TableShape | None] = lambda name: None,
    ) -> None:
        self._is_table = is_table
        self._shape = shape
        self._volatile = (
            re.compile(r"\b(" + "|".join(sorted(map(re.escape, volatile))) + r")\s*\(", re.IGNORECASE)
            if volatile
            else None
        )
        self._scopes: dict[int, _Scope] = {}

    def try_add(self, call: exp.Anonymous, request: exp.Expr, spec: CallSpec) -> exp.Expr | None:
        """The column that replaces `call`, or None when the call must stream."""
        if spec.bulk_rows is None:
            return None
        select = self._eligible_scope(call, request)
        if select is None:
            return None
        scope = self._scopes.get(id(select))
        if scope is None:
            scope = self._scopes[id(select)] = _Scope(select, BULK_PREFIX + uuid.uuid4().hex[:12])
        column = f"{COLUMN_PREFIX}{len(scope.calls)}"
        scope.requests.append(request.copy())
        scope.calls.append(spec)
        return exp.column(column, table=scope.alias)

    def finish(self) -> list[Prescore]:
        """Attach the collected scopes' scores (POSITIONAL JOIN, or carried columns); the prescores the engine
        must run first."""
        prescores = []
        for scope in self._scopes.values():
            columns = tuple(f"{COLUMN_PREFIX}{i}" for i in range(len(scope.calls)))
            found = self._carried(scope) if len(self._scopes) == 1 else None
            carried, rows = None, None
            if found is not None:
                carried, shape = found
                rows = shape.rows if scope.select.args.get("where") is None else None
                source = _carried_source(scope, columns, carried)
                _read_from_scores(scope)
            else:
                source = _source(scope, columns)
                scope.select.append("joins", exp.Join(this=exp.to_table(scope.alias), method="POSITIONAL"))
            for star in scope.select.expressions:
                if isinstance(star, exp.Star):  # `SELECT *` must not show the scored columns
                    star.set("except_", [*(star.args.get("except_") or []), *map(exp.column, columns)])
            prescores.append(
                Prescore(
                    scope.alias,
                    source.sql("duckdb", copy=False),
                    tuple(scope.calls),
                    columns,
                    tuple(carried or ()),
                    rows,
                )
            )
        return prescores

    def _carried(self, scope: _Scope) -> tuple[list[str], TableShape] | None:
        """The table columns the statement reads besides the requests, where carrying them pays: plain
        references to fixed-width columns, few bytes a row, a bounded copy; with the table's shape. None: use
        a POSITIONAL JOIN."""
        select = scope.select
        table = select.args["from_"].this
        outside = [value for key, value in select.args.items() if key not in ("from_", "where", "joins")]
        nodes = [node for value in outside for item in (value if isinstance(value, list) else [value])
                 if isinstance(item, exp.Expr) for node in item.walk()]  # fmt: skip
        # A correlated reference, a lambda's own names, a COLUMNS(regex) that could match the scored columns.
        if any(isinstance(node, exp.Subquery | exp.Select | exp.Lambda | exp.Columns) for node in nodes):
            return None
        name = table.copy()
        name.set("alias", None)
        shape = self._shape(name.sql("duckdb"))  # two queries: asked only once the syntax allows carrying
        if shape is None:
            return None
        own = table.alias_or_name.lower()
        aliases = {e.alias.lower() for e in select.expressions if isinstance(e, exp.Alias)}
        names = {column.lower(): column for column in shape.columns}  # DuckDB's names are case-insensitive
        wanted: set[str] = set()
        for node in nodes:
            if isinstance(node, exp.Star):
                wanted.update(shape.columns)
            elif isinstance(node, exp.Column):
                if node.table == scope.alias:
                    continue  # a scored column
                if (
                    node.args.get("db")
                    or isinstance(node.this, exp.Star)
                    or node.table.lower() not in ("", own)
                ):
                    return None  # `s.a` may be a field of a STRUCT column s, not the table's column a
                if node.name.lower() in names:
                    wanted.add(names[node.name.lower()])
                elif node.name.lower() not in aliases or node.table:
                    return None  # not a column of the table (e.g. a pseudo-column such as rowid)
        widths = [_FIXED_WIDTH.get(shape.columns[c]) for c in wanted]
        if any(w is None for w in widths):
            return None
        row_bytes = sum(w or 0 for w in widths)
        if row_bytes > _CARRY_ROW_BYTES or row_bytes * shape.rows > _CARRY_TABLE_BYTES:
            return None
        return [c for c in shape.columns if c in wanted], shape  # the table's order: `*` expands as it would

    def _eligible_scope(self, call: exp.Anonymous, request: exp.Expr) -> exp.Select | None:
        select = call.find_ancestor(exp.Select)
        if not isinstance(select, exp.Select) or not self._in_projection(call, select):
            return None
        if any(select.args.get(key) for key in _ROW_CHANGING):
            return None
        distinct = select.args.get("distinct")
        if distinct is not None and distinct.args.get("on") is not None:
            return None
        if not self._top_level(select):
            return None
        source = select.args.get("from_")
        table = source.this if source is not None else None
        if not isinstance(table, exp.Table) or not isinstance(table.this, exp.Identifier):
            return None  # a subquery, a table function, or no FROM at all
        if table.args.get("sample") is not None or table.args.get("pivots") or self._shadowed(select, table):
            return None
        if not self._deterministic(request) or not self._deterministic(select.args.get("where")):
            return None
        if request.find(exp.AggFunc, exp.Window, exp.Subquery, exp.Select) is not None:
            return None
        name = table.copy()
        name.set("alias", None)
        return select if self._is_table(name.sql("duckdb")) else None

    @staticmethod
    def _in_projection(call: exp.Expr, select: exp.Select) -> bool:
        node = call
        while node.parent is not select:
            node = node.parent  # type: ignore[assignment]
            if node is None or isinstance(node, _CONDITIONAL):
                return False
        return node.arg_key == "expressions"

    @staticmethod
    def _top_level(select: exp.Select) -> bool:
        # An outer query could push a filter or a LIMIT into this one, so the UDF would see fewer rows.
        node: exp.Expr | None = select.parent
        while node is not None:
            if isinstance(node, exp.SetOperation):
                if any(node.args.get(key) for key in ("limit", "offset", "fetch")):
                    return False
            elif not isinstance(node, exp.Create | exp.Insert | exp.Schema):
                return False
            node = node.parent
        return True

    @staticmethod
    def _shadowed(select: exp.Select, table: exp.Table) -> bool:
        """A CTE of the same name hides the base table."""
        names = {
            cte.alias_or_name.lower()
            for node in (select, *_ancestors(select))
            if (with_ := node.args.get("with_"))
            for cte in with_.expressions
        }
        return not table.args.get("db") and table.name.lower() in names

    def _deterministic(self, node: exp.Expr | None) -> bool:
        if node is None:
            return True
        text = node.sql("duckdb").lower()
        if "__aifuncs_" in text or any(get_spec(n.name) for n in node.find_all(exp.Anonymous)):
            return False  # another AI call: it would run twice
        return self._volatile is None or self._volatile.search(text) is None


def _ancestors(node: exp.Expr) -> list[exp.Expr]:
    found = []
    while node.parent is not None:
        node = node.parent
        found.append(node)
    return found


def _carried_source(scope: _Scope, columns: tuple[str, ...], carried: list[str]) -> exp.Select:
    """`SELECT carried..., request ... FROM table WHERE filter`: the filter applied once, here."""
    projections: list[exp.Expr] = [exp.column(c, quoted=True) for c in carried]
    projections += [exp.alias_(r, c) for r, c in zip(scope.requests, columns, strict=True)]
    source = exp.Select(expressions=projections).from_(scope.select.args["from_"].this.copy())
    where = scope.select.args.get("where")
    return source.where(where.this.copy()) if where is not None else source


def _read_from_scores(scope: _Scope) -> None:
    """Point the statement at the prescored result, under the table's own name (so `t.id` still resolves),
    its filter dropped (the prescore applied it)."""
    select = scope.select
    table = select.args["from_"].this
    name = table.alias_or_name
    for column in select.find_all(exp.Column):
        if column.table == scope.alias:
            column.set("table", exp.to_identifier(name))
    select.set("from_", exp.From(this=exp.to_table(scope.alias).as_(name)))
    select.set("where", None)


def _source(scope: _Scope, columns: tuple[str, ...]) -> exp.Select:
    """`SELECT CASE WHEN filter THEN request END ... FROM table`: one row per table row, in scan order."""
    where = scope.select.args.get("where")
    projections = []
    for request, column in zip(scope.requests, columns, strict=True):
        value = exp.Case(ifs=[exp.If(this=where.this.copy(), true=request)]) if where is not None else request
        projections.append(exp.alias_(value, column))
    source = exp.Select(expressions=projections).from_(scope.select.args["from_"].this.copy())
    return source
