"""Databricks SQL on DuckDB (and on Spark 4, through the `Spark4` writer): what sqlglot's transpiler leaves
for us.

sqlglot translates most of Databricks SQL to DuckDB (named_struct, CONCAT, `:` JSON paths, explode,
type strings). Two gaps matter to AI queries, and are closed here:
- constructs DuckDB cannot express (query hints, DISTRIBUTE/CLUSTER/SORT BY) are dropped silently by the
  generator or raise a bare message: we refuse them with their name and position instead;
- `from_json(text, 'a INT, b STRING')` (the usual way to read an AI answer given as JSON) takes a type
  string, while DuckDB's from_json takes a JSON structure: we turn it into a cast from JSON.
"""

from __future__ import annotations

import functools

import sqlglot
from sqlglot import exp
from sqlglot.dialects.databricks import Databricks
from sqlglot.errors import ErrorLevel
from sqlglot.generators.databricks import DatabricksGenerator
from sqlglot.generators.spark import SparkGenerator

from aifuncs._types import to_duckdb_type
from aifuncs.errors import ArgumentError, SqlError

# Select arguments of Spark/Databricks SQL that have no DuckDB counterpart (the generator drops them).
_DROPPED_CLAUSES = {"distribute": "DISTRIBUTE BY", "cluster": "CLUSTER BY", "sort": "SORT BY"}


@functools.cache
def reader(dialect: str) -> sqlglot.Dialect:
    """The dialect to parse with: sqlglot's, less its own typed AI_* functions (AI_CLASSIFY, AI_AGG...), so
    every AI call reaches the planner as written and is bound, and checked, by its spec in udfs/."""
    base = sqlglot.Dialect.get_or_raise(dialect)
    base_parser = type(base).parser_class
    functions = {
        k: v for k, v in base_parser.FUNCTIONS.items() if not k.startswith("AI_") and k != "VECTOR_SEARCH"
    }
    parser = type("Parser", (base_parser,), {"FUNCTIONS": functions})
    return type(f"Aifuncs{type(base).__name__}", (type(base),), {"Parser": parser})()


def adapt(tree: exp.Expr, dialect: str, number: int, engine: str = "duckdb") -> exp.Expr:
    """Refuse what cannot be translated, and translate what sqlglot does not, in statement `number`, for
    an engine that reads `engine` SQL (Spark reads Databricks SQL as it is)."""
    if dialect == engine or engine != "duckdb":
        return tree
    for node in tree.walk():
        for arg, clause in _DROPPED_CLAUSES.items():
            if isinstance(node, exp.Select) and node.args.get(arg):
                raise _untranslatable(clause, node.args[arg], number, dialect)
        if isinstance(node, exp.Hint):
            raise _untranslatable("a query hint (/*+ ... */)", node, number, dialect)
    for call in list(tree.find_all(exp.FromJson)):
        call.replace(_from_json(call))
    return tree


class Spark4(Databricks):
    """What Spark 4 reads: Databricks SQL, except that `text:a.b` (a JSON path on a string, which Spark
    allows on VARIANT only) is written as Spark's get_json_object. sqlglot's spark writer would do that too,
    but it drops parse_json (`variant_get(parse_json(j), ...)` became `VARIANT_GET(j, ...)`)."""

    class Generator(DatabricksGenerator):
        QUOTE_JSON_PATH = True
        TRANSFORMS = {
            **DatabricksGenerator.TRANSFORMS,
            **{k: SparkGenerator.TRANSFORMS[k] for k in (exp.JSONExtract, exp.JSONPathRoot)},
        }


def writer(engine: str) -> str | sqlglot.Dialect:
    """The sqlglot dialect an engine's SQL is written in."""
    return _SPARK4 if engine == "spark" else engine


_SPARK4 = Spark4()


def to_engine(tree: exp.Expr, dialect: str, engine: str, number: int) -> str:
    """The statement in the engine's SQL (see `to_duckdb`)."""
    if engine == "duckdb":
        return to_duckdb(tree, dialect, number)
    try:
        return tree.sql(writer(engine), copy=False, unsupported_level=ErrorLevel.RAISE)
    except sqlglot.errors.UnsupportedError as error:
        raise SqlError(
            f"Cannot translate statement {number} from {dialect} SQL to {engine}: {error}. Rewrite that part"
            " of the statement."
        ) from None


def to_duckdb(tree: exp.Expr, dialect: str, number: int) -> str:
    """The statement as DuckDB SQL; an error naming what DuckDB cannot express, if anything. The tree is
    the planner's own by now, so the generator may use it as it is (a copy costs ~10% of planning)."""
    if dialect == "duckdb":
        return tree.sql("duckdb", copy=False)
    try:
        return tree.sql("duckdb", copy=False, unsupported_level=ErrorLevel.RAISE)
    except sqlglot.errors.UnsupportedError as error:
        raise SqlError(
            f"Cannot translate statement {number} from {dialect} SQL to DuckDB: {error}. Rewrite that part"
            " of the statement."
        ) from None


def _from_json(call: exp.FromJson) -> exp.Expr:
    schema = call.expression
    if not (isinstance(schema, exp.Literal) and schema.is_string):
        return call  # a schema computed per row: left to DuckDB, which will say what it thinks
    text = schema.this.strip()
    ddl = text if text.upper().startswith(("STRUCT", "ARRAY", "MAP")) else f"STRUCT<{_fields(text)}>"
    try:
        duckdb_type = to_duckdb_type(ddl)
    except ArgumentError as error:
        raise SqlError(f"from_json: cannot read the schema {text!r}: {error}") from None
    return exp.TryCast(
        this=exp.cast(call.this.copy(), "JSON"), to=exp.DataType.build(duckdb_type, dialect="duckdb")
    )


def _fields(text: str) -> str:
    """'a INT, b STRING' (Spark's DDL field list) -> 'a: INT, b: STRING'."""
    fields = []
    depth, start = 0, 0
    for i, char in enumerate(text + ","):
        depth += char in "<(" and 1 or (char in ">)" and -1) or 0
        if char == "," and depth == 0:
            name, _, kind = text[start:i].strip().partition(" ")
            fields.append(f"{name}: {kind.strip()}")
            start = i + 1
    return ", ".join(fields)


def _untranslatable(what: str, node: exp.Expr, number: int, dialect: str) -> SqlError:
    where = next((n.meta for n in node.walk() if n.meta.get("line")), None)
    # sqlglot records where a token ends; count back to where it starts.
    column = where["col"] - (where["end"] - where["start"]) if where else 0
    position = f" at line {where['line']}, column {column}" if where else ""
    return SqlError(
        f"Statement {number} uses {what}{position}, which DuckDB has no counterpart for; remove it to run"
        f" this {dialect} SQL here."
    )
