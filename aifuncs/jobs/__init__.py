"""Scheduled jobs: a SQL file with AI functions, run with parameters, checkpointed, recorded in a ledger.

    aifuncs run nightly.sql --db warehouse.duckdb --param day=2026-11-24 --output table:ticket_topics

A run takes the job's lock (one run of a job at a time), records itself in the ledger, and keeps every
answer a rerun would pay for again in the job's checkpoint (`aifuncs.runtime._checkpoint`): killed or
failed half-way and run again, it asks only for what had no answer. The checkpoint is deleted once the
job succeeds. `run()` never raises for what happens inside the job: the result (and the ledger) says
how it ended, with an exit code a scheduler can act on (`Exit`).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import sqlglot

from aifuncs import _runs as ledger
from aifuncs._home import home
from aifuncs.engines.duckdb import connect, returns_rows, sql_each
from aifuncs.errors import AifuncsError, Interrupted, SqlError
from aifuncs.governance import current
from aifuncs.jobs._lock import JobLock
from aifuncs.jobs._outcome import STATUS, Exit, Stop, exit_code, in_words
from aifuncs.jobs._output import Output
from aifuncs.jobs._params import substitute
from aifuncs.jobs._preflight import check_script
from aifuncs.planner import split_statements
from aifuncs.runtime import RequestContext
from aifuncs.runtime._budget import price
from aifuncs.runtime._checkpoint import Checkpoint
from aifuncs.runtime._progress import Progress
from aifuncs.session import Session, SpendingLimits, merge, open_session, request_context

__all__ = ["Exit", "RunResult", "check_output", "get_run", "list_runs", "run"]


@dataclass
class RunResult:
    run_id: int
    job: str
    status: str  # succeeded or failed
    exit_code: int
    rows: int
    failed_rows: int
    requests: int
    tokens: int
    cost_usd: float
    seconds: float
    output: str | None
    output_rows: int | None
    resumed_from: int | None
    checkpoint_answers: int
    error: str | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def run(
    path: str | Path,
    *,
    db: str | Path = ":memory:",
    params: dict[str, str] | None = None,
    output: str | None = None,
    dialect: str = "duckdb",
    limits: SpendingLimits | None = None,
    max_requests: int | None = None,
    max_tokens: int | None = None,
    max_cost_usd: float | None = None,
    max_failed_rows: int | None = None,
    progress: Progress | None = None,
    on_event: Callable[[dict[str, Any]], None] | None = None,
    on_result: Callable[[pa.Table], None] | None = None,
    token: str | None = None,
    engine: str = "duckdb",
) -> RunResult:
    """Run the job in `path` (see the module's text). Raises only before the run starts: a missing file,
    a bad output target, `JobLocked` when another run of the job holds its lock. `on_event` receives the
    JSON events; `on_result` the last query's rows when there is no `output` (the CLI shows them). The job
    acts as `token`'s principal (else AIFUNCS_TOKEN's, else the OS account owning AIFUNCS_HOME). `limits`
    (`aifuncs.SpendingLimits`, or `max_requests`, `max_tokens`, `max_cost_usd`) is the run's budget.

    `engine="spark"` runs the statements on Spark (the active session, else Spark Connect at
    SPARK_REMOTE, else a local session on every core): the tables are the session's, `table:NAME` is
    written to its catalog, and the run's counts are read back from the usage its workers logged."""
    limits = merge(
        SpendingLimits, limits, max_requests=max_requests, max_tokens=max_tokens, max_cost_usd=max_cost_usd
    )
    _check_engine(engine, db, limits)
    path = Path(path).resolve()
    try:
        text = path.read_text()
    except OSError as unreadable:
        raise AifuncsError(
            f"Cannot read the job {str(path)!r}: {unreadable.strerror or unreadable}."
        ) from None
    params = dict(params or {})
    target = Output.parse(output)
    database = str(db if str(db) == ":memory:" else Path(db).resolve())
    # The output is not part of the job's identity: a rerun that only corrects where the rows go resumes
    # from the answers the failed run paid for.
    identity = [str(path), sorted(params.items()), database, dialect]
    key = hashlib.sha256(json.dumps(identity + ([engine] if engine != "duckdb" else [])).encode())
    job_dir = home() / "jobs" / f"{path.stem}-{key.hexdigest()[:12]}"
    with JobLock(job_dir / "lock", path.stem):
        session = open_session(
            token=token
        )  # the run's own: its checkpoint, budget and labels are no one else's
        runner = session.principal
        run_id = ledger.start(path.stem, key.hexdigest(), str(path), params, database, output, runner.name)
        checkpoint_path = job_dir / "checkpoint.db"
        resumed_from = ledger.last_unfinished(key.hexdigest(), run_id) if checkpoint_path.exists() else None
        checkpoint = Checkpoint(checkpoint_path)
        answers = checkpoint.answers() if resumed_from is not None else 0
        ledger.update(run_id, resumed_from=resumed_from, checkpoint_answers=answers)
        emit = on_event or (lambda event: None)
        emit({"event": "start", "run_id": run_id, "job": path.stem, "resumed_from": resumed_from,
              "checkpoint_answers": answers})  # fmt: skip
        counts = progress or Progress(None)
        started = time.monotonic()
        error: BaseException | None = None
        output_rows = None
        runtime = session.runtime
        labels = json.dumps({"job": path.stem, "run_id": str(run_id)})  # its usage rows' usage_context
        stopped = Stop()
        try:
            budget = limits.budget(name="job")
            context = request_context("job", {"job": path.stem, "run_id": str(run_id)})
            stopped.on_stop = lambda: runtime.cancel_calls(context)  # at once, not when DuckDB lets go
            # Every statement parsed and every endpoint resolved before the first one runs (and pays).
            check_script(substitute(text, dialect, params), dialect, session.catalog)
            if engine == "spark":
                output_rows = _execute_on_spark(
                    text, params, dialect, target, emit, on_result, context, token
                )
                counts = _counted_from_usage(counts, context, session)
            else:
                job = session.derive(
                    budgets=(budget,), progress=counts, context=context, checkpoint=checkpoint
                )
                output_rows = _execute(text, database, params, dialect, target, job, counts, emit, on_result)
        except (AifuncsError, duckdb.Error, sqlglot.errors.SqlglotError) as failure:
            error = failure
        except BaseException as failure:  # SIGTERM's error, as DuckDB may have turned it (KeyboardInterrupt)
            if not stopped.told:
                raise
            error = Interrupted("The run was stopped (SIGTERM) before it finished; run it again to resume.")
            error.__cause__ = failure
        finally:
            stopped.restore()
            counts.finish()
            checkpoint.close()
        code = Exit.OK if error is None else Exit.INTERRUPTED if stopped.told else exit_code(error)
        message = None if error is None else in_words(error)
        if error is None and max_failed_rows is not None and counts.failed_rows > max_failed_rows:
            code = Exit.FAILED_ROWS
            message = f"{counts.failed_rows:,} rows failed; --max-failed-rows allows {max_failed_rows:,}."
        if code == Exit.OK:
            checkpoint.delete()  # done: a later run of the job starts afresh
        snapshot = counts.snapshot()
        if engine != "spark":  # failed and retried requests were paid too: the usage log has them all
            if stopped.told:  # the batches handed over still run: stopped first, or later sends go uncounted
                runtime.cancel_calls(request_context("job", {"job": path.stem, "run_id": str(run_id)}))
            spent, used = runtime.usage.spent(labels)
            snapshot["requests"] = max(snapshot["requests"], spent)
            snapshot["tokens"] = max(snapshot["tokens"], used)
        result = RunResult(
            run_id=run_id,
            job=path.stem,
            status=STATUS.get(code, "failed"),
            exit_code=int(code),
            rows=counts.rows,  # answers given (NULL requests included), every AI call of every statement
            failed_rows=snapshot["failed_rows"],
            requests=snapshot["requests"],
            tokens=snapshot["tokens"],
            cost_usd=snapshot["cost_usd"],
            seconds=round(time.monotonic() - started, 3),
            output=output,
            output_rows=output_rows,
            resumed_from=resumed_from,
            checkpoint_answers=answers,
            error=message,
        )
        ledger.update(
            run_id,
            status=result.status,
            exit_code=result.exit_code,
            ended_at=ledger.now(),
            rows=result.rows,
            failed_rows=result.failed_rows,
            requests=result.requests,
            tokens=result.tokens,
            cost_usd=result.cost_usd,
            output_rows=output_rows,
            error=message,
        )
        return result


def check_output(output: str | None) -> None:
    """Raise `AifuncsError` when `output` is not a target `run` can write: table:NAME, or FILE.parquet or
    FILE.csv in a folder that exists and this user may write to."""
    Output.parse(output)


def list_runs(job: str | None = None, limit: int | None = None) -> list[dict[str, Any]]:
    """The ledger, newest first: every run's job, parameters, times, status, counts, cost and output; an
    admin sees every run, anyone else its own."""
    me = current().principal
    return ledger.runs(job, limit, None if me.admin else me.name)


def get_run(run_id: int) -> dict[str, Any] | None:
    """One run, when it is yours (or you are an admin): another's reads exactly as one that does not exist."""
    found = ledger.get(run_id)
    me = current().principal
    return found if found is not None and (me.admin or found["principal"] == me.name) else None


def _execute(
    text: str,
    database: str,
    params: dict[str, str],
    dialect: str,
    target: Output | None,
    job: Session,
    counts: Progress,
    emit: Callable[[dict[str, Any]], None],
    on_result: Callable[[pa.Table], None] | None,
) -> int | None:
    """Run the statements in the job's session (its budget, progress, labels and checkpoint); the last one's
    rows go to the output. Returns the output's row count."""
    sql = substitute(text, dialect, params)
    statements = len(split_statements(sql, dialect))
    con = connect(database, session=job)
    try:
        con.execute("SET enable_progress_bar = false")
        output_rows = None
        began = time.monotonic()
        stream = sql_each(
            con, sql, dialect=dialect, budget=job.budgets[0], progress=counts, context=job.context,
            checkpoint=job.checkpoint,
        )  # fmt: skip
        for number, (statement, relation) in enumerate(stream, start=1):
            if relation is not None and returns_rows(statement):
                if number == statements and target is not None:
                    output_rows = target.write(con, relation)
                elif number == statements and on_result is not None:
                    rows = relation.to_arrow_table()  # run once: showing and counting must not run it twice
                    on_result(rows)
                    output_rows = rows.num_rows
                else:
                    output_rows = _consume(relation)
            emit({"event": "statement", "number": number, "of": statements,
                  "seconds": round(time.monotonic() - began, 3), "sql": _first_line(statement)})  # fmt: skip
            began = time.monotonic()
        if target is not None and output_rows is None:
            raise SqlError(
                f"The job's last statement returns no rows to write to {target.text}: end it with a query."
            )
        return output_rows
    finally:
        con.close()


def _check_engine(engine: str, db: str | Path, limits: SpendingLimits) -> None:
    if engine not in ("duckdb", "spark"):
        raise AifuncsError(f"engine {engine!r}: use duckdb or spark.")
    if engine == "spark" and str(db) != ":memory:":
        raise AifuncsError(
            "--db names a DuckDB database; a job on Spark reads and writes the Spark session's tables. Drop --db."
        )
    if engine == "spark" and limits != SpendingLimits():
        raise AifuncsError(
            "Budgets (--max-requests, --max-tokens, --max-cost) are not available on Spark: its workers would"
            " each count their own. Cap the job with the endpoint's rate limits, which its workers share."
        )


def _execute_on_spark(
    text: str,
    params: dict[str, str],
    dialect: str,
    target: Output | None,
    emit: Callable[[dict[str, Any]], None],
    on_result: Callable[[pa.Table], None] | None,
    context: RequestContext,
    token: str | None,
) -> int | None:
    """`_execute` on Spark: each statement through aifuncs.spark; the last query's rows to the output."""
    from aifuncs.engines.spark import failure_of, session
    from aifuncs.engines.spark import sql as spark_sql

    sql = substitute(text, dialect, params)
    statements = split_statements(sql, dialect)
    spark = session()
    output_rows = None
    began = time.monotonic()
    try:
        for number, statement in enumerate(statements, start=1):
            frame = spark_sql(
                spark, statement, dialect=dialect, token=token, origin=context.origin,
                usage_context=dict(context.usage_context),
            )  # fmt: skip
            if frame is not None and returns_rows(statement):
                if number == len(statements) and target is not None:
                    output_rows = target.write_spark(frame)
                elif number == len(statements) and on_result is not None:
                    rows = frame.toArrow()
                    on_result(rows)
                    output_rows = rows.num_rows
                else:
                    output_rows = _consume_spark(frame)
            emit({"event": "statement", "number": number, "of": len(statements),
                  "seconds": round(time.monotonic() - began, 3), "sql": _first_line(statement)})  # fmt: skip
            began = time.monotonic()
    except AifuncsError:
        raise
    except Exception as error:
        raise failure_of(error) from error
    if target is not None and output_rows is None:
        raise SqlError(
            f"The job's last statement returns no rows to write to {target.text}: end it with a query."
        )
    return output_rows


def _consume_spark(frame: Any) -> int:
    """`_consume` on Spark: the rows run to Spark's noop sink, counted on the way (one pass)."""
    from pyspark.sql import Observation
    from pyspark.sql import functions as F

    seen = Observation("aifuncs_rows")
    frame.observe(seen, F.count(F.lit(1)).alias("rows")).write.format("noop").mode("overwrite").save()
    return int(seen.get["rows"])


def _counted_from_usage(counts: Progress, context: RequestContext, session: Session) -> Progress:
    """A Spark run's requests, rows and tokens, as its workers logged them (they share no meter with this
    process): the usage rows labelled with this run."""
    labels = json.dumps(dict(context.usage_context))
    runtime = session.runtime
    prices: dict[str, Any] = {}
    for row in runtime.usage.read():
        if row["usage_context"] != labels:
            continue
        name = row["endpoint"]
        if name not in prices:
            try:
                prices[name] = runtime.provider(session.base_catalog.get(name)).options
            except AifuncsError:
                prices[name] = None  # deleted since: unpriced
        rows, tokens_in, tokens_out = row["rows"] or 0, row["input_tokens"], row["output_tokens"]
        counts.end_request(
            rows, (tokens_in or 0) + (tokens_out or 0), price(prices[name], rows, tokens_in, tokens_out)
        )
        counts.answered(rows, rows if row["status"] == "error" else 0)
    return counts


def _consume(relation: duckdb.DuckDBPyRelation) -> int:
    """Run a query nobody reads (a streamed SELECT runs only as it is fetched), counting its rows."""
    return sum(batch.num_rows for batch in relation.to_arrow_reader(1 << 16))


def _first_line(statement: str, length: int = 80) -> str:
    line = " ".join(statement.split())
    return line if len(line) <= length else line[: length - 3] + "..."
