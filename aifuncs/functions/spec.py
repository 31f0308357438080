"""Read and hold the function specs of `udfs/`."""

from __future__ import annotations

import functools
import tomllib
from dataclasses import dataclass
from typing import Any, Literal

from aifuncs._home import resource_dir

_MISSING: Any = object()


@dataclass(frozen=True)
class Param:
    name: str
    kind: Literal["constant", "column"]
    type: str | None = None
    required: bool = False
    default: Any = _MISSING

    @property
    def has_default(self) -> bool:
        return self.default is not _MISSING


@dataclass(frozen=True)
class FunctionSpec:
    name: str
    description: str
    returns: str
    params: tuple[Param, ...]
    # ai_query; a task answered by a chat endpoint; an embedding; a similarity (planned as two embeddings)
    kind: Literal["query", "task", "embed", "similarity"] = "query"
    prompt: str = ""  # a task's prompt: {content} and the names of its constant parameters are filled in
    answer: str = "text"  # how a task's reply becomes its value (see aifuncs/functions/tasks.py)
    labels: tuple[str, ...] = ()  # a task's fixed labels (ai_analyze_sentiment)
    max_tokens: int = 512  # a task's reply length
    aggregate: bool = False  # answers a group (GROUP BY): planned as a function of list(expr)

    def param(self, name: str) -> Param | None:
        lowered = name.lower()
        return next((p for p in self.params if p.name.lower() == lowered), None)

    @property
    def signature(self) -> str:
        parts = [p.name if p.required else f"[{p.name}]" for p in self.params]
        return f"{self.name}({', '.join(parts)})"


def _load(data: dict[str, Any]) -> FunctionSpec:
    params = tuple(
        Param(
            name=p["name"],
            kind=p["kind"],
            type=p.get("type"),
            required=p.get("required", False),
            default=p.get("default", _MISSING),
        )
        for p in data.get("params", [])
    )
    return FunctionSpec(
        data["name"],
        data.get("description", ""),
        data.get("returns", "VARCHAR"),
        params,
        kind=data.get("kind", "query"),
        prompt=data.get("prompt", ""),
        answer=data.get("answer", "text"),
        labels=tuple(data.get("labels", ())),
        max_tokens=data.get("max_tokens", 512),
        aggregate=data.get("aggregate", False),
    )


@functools.cache
def all_specs() -> dict[str, FunctionSpec]:
    specs = {}
    for path in sorted(resource_dir("udfs").glob("*.toml")):
        spec = _load(tomllib.loads(path.read_text()))
        specs[spec.name.lower()] = spec
    return specs


def get_spec(name: str) -> FunctionSpec | None:
    return all_specs().get(name.lower())
