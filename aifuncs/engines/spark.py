"""The Spark binding: the same planner, catalog, governance and runtime, with each AI call site an Arrow
UDF that Spark's Python workers run.

`sql(spark, query)` plans the query on the driver (types from Spark's analysis of a probe query, endpoints
authorized for the query's principal before any task starts) and hands Spark the statement in its own
SQL, every AI call replaced by `__aifuncs_<function>_<hash>(request)`, an `arrow_udf` registered for that
call site alone (its own result type). Inside a worker the UDF feeds Spark's Arrow batches to the runtime:
an in-process model is called once per batch, one call at a time per task (Spark already runs a task per
core); remote endpoints are pipelined, the next batch sent while the last is answered, so the request
stream does not drain at batch edges. Only `SparkSession.sql` and `udf.register` are used, so classic
Spark and Spark Connect are served alike.

What a job shares: the endpoint's in-flight limit is divided among the job's Python workers; rate limits,
usage and the inference table are the ones in AIFUNCS_HOME, which a local session's workers share with
the driver (the driver's home travels with the call); on a cluster, executors keep their own. With a shared
database (AIFUNCS_DATABASE_URL, or `database_url=`) its URL travels with the call too, so every worker, local
or on a cluster, takes its rate limits from the database's buckets, as the driver does.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import threading
import warnings
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import pyarrow as pa

from aifuncs import errors
from aifuncs._home import home
from aifuncs._types import arrow_type, decode_json, duckdb_ddl
from aifuncs.errors import AifuncsError, ArgumentError, ConfigError, MissingSecret, SqlError
from aifuncs.governance.payloads import payload_log
from aifuncs.planner import EngineHooks, rewrite
from aifuncs.runtime import CallSpec, default_runtime
from aifuncs.session import RequestOptions, Session, merge, open_session, request_context
from aifuncs.storage import ENV as DATABASE_ENV
from aifuncs.storage import database_url as configured_database
from aifuncs.storage import redact

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

__all__ = ["cosine_similarity", "failure_of", "local_session", "session", "sql", "workers_of"]

COSINE_SIMILARITY = "__aifuncs_cosine_similarity"


def sql(
    spark: SparkSession,
    query: str,
    *,
    dialect: str = "databricks",
    token: str | None = None,
    options: RequestOptions | None = None,
    wait_for_limits: bool | None = None,
    usage_context: Mapping[str, str] | None = None,
    client_request_id: str | None = None,
    workers: int | None = None,
    origin: str = "sql",
    database_url: str | None = None,
) -> DataFrame | None:
    """Run a query with AI functions on Spark; returns the DataFrame of the last statement.

    The query is Databricks SQL by default. It runs as the principal of `token` (else of `AIFUNCS_TOKEN`,
    else the OS account that owns AIFUNCS_HOME), checked here, before Spark starts any task. `workers`:
    the job's Python workers at once (default: read from the session, e.g. 2 for `local[2]`), among which
    each endpoint's in-flight limit is divided. `options` (`aifuncs.RequestOptions`, or its fields as
    keywords): `usage_context`, `client_request_id` and `origin` go into the usage log as with `aifuncs.sql`
    (a progress line is the DuckDB engine's). `database_url`: the shared database (`postgresql://...`) the
    query is planned against and its workers take their limits from (default: AIFUNCS_DATABASE_URL); it
    travels with the job's calls and is never shown with its password."""
    _check_session(spark)
    with _environment(DATABASE_ENV, database_url):
        return _run(spark, query, dialect, token, options, wait_for_limits, usage_context, client_request_id,
                    workers, origin)  # fmt: skip


def _run(
    spark: SparkSession,
    query: str,
    dialect: str,
    token: str | None,
    options: RequestOptions | None,
    wait_for_limits: bool | None,
    usage_context: Mapping[str, str] | None,
    client_request_id: str | None,
    workers: int | None,
    origin: str,
) -> DataFrame | None:
    options = merge(
        RequestOptions, options, usage_context=usage_context, client_request_id=client_request_id,
        wait_for_limits=wait_for_limits,
    )  # fmt: skip
    # The query's session: its principal (checked here, before any task), runtime, labels and waiting.
    session = open_session(token=token).derive(
        context=request_context(origin, options.usage_context, options.client_request_id),
        wait_for_limits=options.wait_for_limits,
    )
    processes = workers if workers is not None else workers_of(spark)
    if not isinstance(processes, int) or processes < 1:
        raise ArgumentError(
            f"workers is the number of Spark's Python workers at once (1 or more), not {workers!r}."
        )
    hooks = _hooks(spark, session, processes)
    if "ai_similarity" in query.lower():
        _register(spark, COSINE_SIMILARITY, cosine_similarity, "double")
    result = None
    for planned in rewrite(query, dialect, hooks):
        result = spark.sql(planned.sql)
    return result


def local_session(cores: int = 2, **config: str) -> SparkSession:
    """A Spark session on this machine (`local[cores]`), set up to run offline: no web UI, loopback only,
    the workers on this Python (so they import the same aifuncs), larger Arrow batches for model calls."""
    import sys

    from pyspark.sql import SparkSession

    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    builder = SparkSession.builder.master(f"local[{cores}]")
    settings = {
        "spark.ui.enabled": "false",
        "spark.ui.showConsoleProgress": "false",
        "spark.driver.host": "127.0.0.1",
        "spark.driver.bindAddress": "127.0.0.1",
        # Rows per Arrow batch a UDF sees; the default 10,000 costs ~0.5 ms a batch. Never 0 or less: 0 hangs
        # on cached input and -1 fails.
        "spark.sql.execution.arrow.maxRecordsPerBatch": "100000",
        **config,
    }
    for key, value in settings.items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("ERROR")
    return spark


def session() -> SparkSession:
    """The Spark session a job runs on: the active one, else Spark Connect at SPARK_REMOTE, else a local
    session on every core."""
    from pyspark.sql import SparkSession

    active = SparkSession.getActiveSession()
    if active is not None:
        return active
    if os.environ.get("SPARK_REMOTE"):
        return SparkSession.builder.getOrCreate()  # Connect, at the address in SPARK_REMOTE
    return local_session(os.cpu_count() or 2)


def failure_of(error: BaseException) -> AifuncsError:
    """A Spark failure as aifuncs' own error: the aifuncs error a worker raised (ModelError, RateLimited...)
    with its message alone, without the worker's traceback; Spark's analysis errors as SqlError."""
    text = str(error)
    raised = _WORKER_ERROR.findall(text)
    if raised:
        name, message = raised[-1]
        kind = getattr(errors, name, None)
        try:  # the worker's type where it is made of a message alone (most are)
            typed = kind(message.strip()) if isinstance(kind, type) else None
        except TypeError:
            typed = None
        return typed if isinstance(typed, AifuncsError) else AifuncsError(message.strip())
    first = next((line.strip() for line in text.splitlines() if line.strip()), type(error).__name__)
    if type(error).__name__ in ("AnalysisException", "ParseException"):
        return SqlError(f"Spark cannot run the statement: {first}")
    return AifuncsError(f"Spark failed: {first}")


# How a worker's exception appears in the PythonException the driver receives.
_WORKER_ERROR = re.compile(r"^aifuncs\.errors\.(\w+): (.*)$", re.MULTILINE)


def workers_of(spark: SparkSession) -> int:
    """How many Python workers a job of this session runs at once: the cores of a local master, else the
    session's default parallelism, else executors x cores per executor."""
    master = _conf(spark, "spark.master") or ""
    local = re.fullmatch(r"local(?:\[(\d+|\*)(?:,\d+)?\])?", master)
    if local is not None:
        cores = local.group(1)
        return (os.cpu_count() or 1) if cores == "*" else int(cores or 1)
    parallelism = _conf(spark, "spark.default.parallelism")
    if parallelism and parallelism.isdigit():
        return int(parallelism)
    executors, cores = _conf(spark, "spark.executor.instances"), _conf(spark, "spark.executor.cores")
    if executors and cores and executors.isdigit() and cores.isdigit():
        return int(executors) * int(cores)
    raise ConfigError(
        f"Cannot tell how many Python workers a job on {master or 'this Spark session'} runs at once, which"
        " each endpoint's in-flight limit is divided among. Pass workers=N (executors x cores per executor)."
    )


def cosine_similarity(left: pa.Array, right: pa.Array) -> pa.Array:
    """Cosine similarity of two float arrays per row (DuckDB's list_cosine_similarity): NULL where either
    is NULL; arrays of different lengths are an error, as in DuckDB."""
    values: list[float | None] = []
    for a, b in zip(left.to_pylist(), right.to_pylist(), strict=True):
        if a is None or b is None:
            values.append(None)
            continue
        if len(a) != len(b):
            raise ArgumentError(
                f"ai_similarity compares embeddings of one length; got {len(a)} and {len(b)} (different"
                " embedding endpoints?)."
            )
        x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
        norms = float(np.linalg.norm(x) * np.linalg.norm(y))
        values.append(float(x @ y) / norms if norms else None)
    return pa.array(values, pa.float64())


def _check_session(spark: Any) -> None:
    if not (hasattr(spark, "sql") and hasattr(spark, "udf")):
        raise ArgumentError(
            f"aifuncs.spark.sql takes a SparkSession first (SparkSession.builder.getOrCreate(), or a Spark"
            f" Connect session), not {type(spark).__name__}."
        )


def _conf(spark: SparkSession, key: str) -> str | None:
    try:
        return spark.conf.get(key, None)
    except Exception:  # Spark Connect refuses some keys outright
        return None


def _hooks(spark: SparkSession, session: Session, processes: int) -> EngineHooks:
    local = (_conf(spark, "spark.master") or "").startswith("local")
    # A local session's workers run on this machine: they keep their accounts in the driver's home (the
    # environment they inherited may name another, set before this query).
    worker_home = str(home()) if local else None
    # The shared database travels to every worker, local or not: its buckets are the job's one rate limit.
    worker_database = configured_database()

    def describe(probe: str) -> str:
        from pyspark.sql.pandas.types import to_arrow_type

        field = spark.sql(probe).schema.fields[0]
        return duckdb_ddl(to_arrow_type(field.dataType, timezone="UTC"))

    def register(call: CallSpec, request_ddl: str | None) -> str:
        # Budgets and progress bars are the driver's objects; the workers answer, they do not meter.
        shipped = dataclasses.replace(call, meters=(), processes=processes)
        shown = redact(worker_database) if worker_database else None  # no password in a function's name
        key = json.dumps([shipped.key(), request_ddl, worker_home, shown])
        name = f"__aifuncs_{call.function}_{hashlib.sha256(key.encode()).hexdigest()[:16]}"
        answers = _answers(shipped, request_ddl is None, worker_home, worker_database)
        _register(spark, name, answers, _spark_type(call.output_type))
        return name

    return EngineHooks(
        describe=describe,
        evaluate=_evaluate,
        register=register,
        session=session,
        dialect="spark",
        name="Spark",
        cosine_similarity=COSINE_SIMILARITY,
        bulk=False,  # Spark's Arrow batches are the bulk path: one model call per batch (see _answers)
    )


def _evaluate(expression: str) -> Any:
    """A constant argument (written as DuckDB SQL by the planner), evaluated by DuckDB on the driver."""
    import duckdb

    with _evaluate_lock, duckdb.connect() as con:
        rows = con.execute(f"SELECT to_json({expression})").fetchall()
    return None if rows[0][0] is None else json.loads(rows[0][0])


_evaluate_lock = threading.Lock()


def _spark_type(ddl: str) -> Any:
    from pyspark.sql.pandas.types import from_arrow_type

    return from_arrow_type(arrow_type(ddl))


def _register(spark: SparkSession, name: str, fn: Callable[..., Any], return_type: Any) -> None:
    from pyspark.sql.functions import arrow_udf

    with warnings.catch_warnings():
        # pyspark 4.3 warns that it does not fully support pandas 3 wherever a Python UDF is made; an Arrow
        # UDF never touches pandas.
        warnings.filterwarnings("ignore", "PySpark does not yet fully support pandas", FutureWarning)
        # Not deterministic to Spark (as DuckDB's side effects): the optimizer must neither repeat a call nor
        # fold two into one.
        made: Any = arrow_udf(cast(Any, fn), return_type)  # the stubs know only fixed signatures
        spark.udf.register(name, made.asNondeterministic())


def _answers(
    call: CallSpec, json_request: bool, worker_home: str | None, worker_database: str | None = None
) -> Callable[[Iterator[pa.Array]], Iterator[pa.Array]]:
    """The UDF of one call site, as Spark's workers run it: batches of requests in, answers out, in order.

    Iterator form, so that a remote endpoint's next batch is sent while the last one is answered, and the
    usage and inference rows are written when the task ends (a worker may be reaped when idle)."""

    def answers(batches: Iterator[pa.Array]) -> Iterator[pa.Array]:
        with _environment("AIFUNCS_HOME", worker_home), _environment(DATABASE_ENV, worker_database):
            runtime = default_runtime()
            ahead = 0 if runtime.provider(call.endpoint).in_process else 1
            pending: deque[Any] = deque()
            try:
                for batch in batches:
                    requests = decode_json(batch) if json_request else batch
                    # In-process models: one call per Spark batch (bulk_rows), one at a time per task.
                    pending.append(runtime.submit_call(call, requests, batch_rows=call.bulk_rows))
                    while len(pending) > ahead:
                        yield pending.popleft().result()
                while pending:
                    yield pending.popleft().result()
            except MissingSecret as missing:  # where a driver's user would look first: the driver
                raise MissingSecret(
                    f"{missing} On Spark the key is read by the Python workers, from their environment: set it"
                    " before the session starts (a local session's workers inherit it), or pass it as"
                    " spark.executorEnv.NAME or a cluster secret. aifuncs never ships keys with a query."
                ) from None
            finally:
                for future in pending:
                    future.cancel()
                runtime.usage.flush()
                payload_log().flush()

    return answers


@contextmanager
def _environment(name: str, value: str | None) -> Iterator[None]:
    """`name` set to `value` while the block runs (the driver's home or database, in a worker); None: as is."""
    if value is None or os.environ.get(name) == value:
        yield
        return
    previous = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = previous
