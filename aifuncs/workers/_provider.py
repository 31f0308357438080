"""The provider a server's runtime gets for an in-process endpoint: the kind's own class for everything the
runtime asks of it (batch sizes, input columns, result type, reuse), with `predict` answered by the entity's
worker pool. The model itself is never loaded in the server's process."""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Callable
from typing import Any, ClassVar

import pyarrow as pa

from aifuncs._endpoint import Endpoint
from aifuncs.providers.base import CallOptions, InputColumn, Prediction, Provider
from aifuncs.workers._pool import Pool


class PooledProvider(Provider):
    """An in-process kind served by worker processes. Subclassed per kind (`pooled_class`) so the runtime reads
    the kind's class attributes (rows per call, bulk path, text or table) as they are."""

    inner_class: ClassVar[type[Provider]]
    streams: ClassVar[bool] = False
    blocking = False  # awaiting the pool holds no thread and never the loop

    def __init__(self, endpoint: Endpoint, pool: Pool, lookup: Callable[[], Pool] | None = None) -> None:
        self.inner = self.inner_class(endpoint)
        super().__init__(endpoint)
        self.options = self.inner.options
        self._pool = pool
        self._lookup = lookup

    @property
    def pool(self) -> Pool:
        # Looked up each call where the server may release it: the runtime keeps this provider for as long as it
        # runs, while a released endpoint version's pool is closed (and made again if it is asked after all).
        return self._pool if self._lookup is None else self._lookup()

    async def predict(self, requests: pa.Array | pa.ChunkedArray, options: CallOptions) -> Any:
        return await self.pool.predict(requests, options, isinstance(requests, pa.ChunkedArray))

    def stream(self, requests: pa.Array, options: CallOptions) -> AsyncIterator[str | Prediction]:
        """A kind that streams (`streams` on its class): one row's answer piece by piece from a worker."""
        return self.pool.stream(requests, options)

    @property
    def concurrency(self) -> int:
        # Batches in flight at once: one answered and one waiting per worker the entity may have, so the pool
        # sees the queue it scales on (smaller requests join waiting batches on the way: `_coalesce.py`).
        return self.options.max_concurrency or 2 * self.pool.most

    @property
    def batch_rows(self) -> int:
        return self.inner.batch_rows

    @property
    def bulk_rows(self) -> int | None:
        return self.inner.bulk_rows

    @property
    def reuse_pays(self) -> bool:
        return self.inner.reuse_pays

    @property
    def max_prompt_chars(self) -> int | None:
        return self.inner.max_prompt_chars

    def model_version(self) -> str | None:
        return self.inner.model_version()

    def deterministic(self, options: CallOptions) -> bool:
        return self.inner.deterministic(options)

    def input_columns(self) -> list[InputColumn] | None:
        return self.inner.input_columns()

    def output_type(self) -> str | None:
        return self.inner.output_type()


@functools.cache
def pooled_class(inner: type[Provider]) -> type[PooledProvider]:
    """The pooled provider of one kind: its class attributes, with `predict` sent to workers."""
    copied = ("kind", "Options", "default_batch_rows", "bulk_batch_rows", "accepts_chunks", "returns_text")
    attributes: dict[str, Any] = {name: getattr(inner, name) for name in copied}
    attributes["streams"] = bool(getattr(inner, "streams", False))
    return type(f"Pooled{inner.__name__}", (PooledProvider,), {**attributes, "inner_class": inner})
