"""Running one planned statement: streamed through its UDFs, or its bulk calls scored ahead (`_prescore`)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import duckdb
import pyarrow as pa

from aifuncs._types import arrow_type
from aifuncs.errors import AifuncsError
from aifuncs.planner import (
    PlannedStatement,
    Prescore,
)
from aifuncs.planner._cost import measurable
from aifuncs.runtime import Runtime
from aifuncs.runtime._progress import Progress

_ROW_KEYWORDS = {"SELECT", "WITH", "FROM", "VALUES", "TABLE", "DESCRIBE", "SHOW", "SUMMARIZE", "EXPLAIN", "PIVOT",
                 "UNPIVOT"}  # fmt: skip


def returns_rows(statement: str) -> bool:
    """Queries return rows; DDL and DML (whose relation is just a count) do not."""
    text = "\n".join(line for line in statement.splitlines() if not line.lstrip().startswith("--")).lstrip()
    first = text.split(None, 1)[0].upper() if text else ""
    return first in _ROW_KEYWORDS or first.startswith("(")


def _execute(
    con: duckdb.DuckDBPyConnection,
    planned: PlannedStatement,
    runtime: Runtime,
    progress: Progress | None = None,
) -> duckdb.DuckDBPyRelation | None:
    if not planned.prescores:
        if progress is not None and planned.calls:
            progress.expect(_streamed_rows(con, planned))
        return con.sql(planned.sql)
    registered = []
    try:
        for prescore in planned.prescores:
            rows, requests = prescore.rows, None
            if prescore.distinct:  # the distinct requests: held anyway, beside their answers
                requests = con.sql(prescore.source).to_arrow_table()
                rows = requests.num_rows
            elif rows is None:
                (rows,) = con.execute(f"SELECT count(*) FROM ({prescore.source})").fetchall()[0]
            if progress is not None:
                progress.expect(rows * len(prescore.calls))
            try:
                scores = _prescore(con, prescore, runtime, rows, requests)
            except AifuncsError as error:
                # The same error a streamed call raises from inside DuckDB, whichever path the query took;
                # the typed error stays reachable as its cause.
                raise duckdb.InvalidInputException(str(error)) from error
            con.register(prescore.name, scores)
            registered.append(prescore.name)
        relation = con.sql(planned.sql)
        # Run it now, while the scores are registered: a lazy relation would outlive them, and
        # running it twice would reuse scores of rows that may have changed.
        return None if relation is None else con.from_arrow(relation.to_arrow_table())
    finally:
        for name in registered:
            con.unregister(name)


def _streamed_rows(con: duckdb.DuckDBPyConnection, planned: PlannedStatement) -> int | None:
    """The rows a streamed statement's AI calls will answer, counted with plain SQL over each call's scope
    (as EXPLAIN does), for the progress line's rows left and ETA; None where a scope cannot be counted."""
    total = 0
    for site in planned.calls:
        probe, upper_bound = measurable(site.probe) if site.probe else (None, False)
        if probe is None or upper_bound:
            return None
        try:
            (rows,) = con.execute(f"SELECT count(*) FROM ({probe})").fetchall()[0]
        except duckdb.Error:
            return None  # a scope that only makes sense inside its query (e.g. correlated)
        total += rows
    return total


def _prescore(
    con: duckdb.DuckDBPyConnection,
    prescore: Prescore,
    runtime: Runtime,
    rows: int,
    source: pa.Table | None = None,
) -> pa.Table:
    """Score a bulk call site's requests in big model calls, keeping the table's row order: the carried
    columns as read, then one column of answers per call. `source`: the prescore's rows, already read."""
    # Read in steps of exactly one model call's rows (DuckDB yields row groups of 122,880): the calls in
    # flight are equal work and finish together, and the first starts as soon as its rows are read.
    step = runtime.bulk_step(prescore.calls, rows)
    reader = (
        source.to_reader(max_chunksize=step)
        if source is not None
        else con.sql(prescore.source).to_arrow_reader(step)
    )
    carried: list[list[pa.Array]] = [[] for _ in prescore.carried]

    def requests() -> Iterator[list[pa.ChunkedArray]]:
        for columns in _rebatched(reader, step):
            for kept, column in zip(carried, columns, strict=False):
                kept.extend(column.chunks)
            yield columns[len(carried) :]

    try:
        answers = runtime.score_batches(prescore.calls, requests(), step)
    finally:
        reader.close()  # a failed call leaves rows unread: the connection must be free for the next query
    schema = reader.schema
    columns = [pa.chunked_array(chunks, schema.field(i).type) for i, chunks in enumerate(carried)]
    columns += [
        pa.chunked_array([row[i] for row in answers], arrow_type(call.output_type))
        for i, call in enumerate(prescore.calls)
    ]
    return pa.table(columns, names=[*prescore.carried, *prescore.columns])


def _rebatched(batches: Iterable[pa.RecordBatch], rows: int) -> Iterator[list[pa.ChunkedArray]]:
    """Columns of exactly `rows` rows (the last may have fewer), whatever sizes the reader yields."""
    held: list[pa.RecordBatch] = []
    count = 0
    for batch in batches:
        while batch.num_rows:
            take = min(rows - count, batch.num_rows)
            held.append(batch.slice(0, take))
            count += take
            batch = batch.slice(take)
            if count == rows:
                yield _columns(held)
                held, count = [], 0
    if held:
        yield _columns(held)


def _columns(batches: list[pa.RecordBatch]) -> list[pa.ChunkedArray]:
    # DuckDB's row groups as they are: the runtime copies them into one array only where a provider needs it.
    return pa.Table.from_batches(batches).columns
