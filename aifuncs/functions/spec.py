"""Read and hold the function specs of `udfs/`."""

from __future__ import annotations

import functools
import os
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from aifuncs._home import home, private_dir, resource_dir
from aifuncs.errors import ConfigError

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
    # ai_query; a task answered by a chat endpoint; an embedding; a similarity (planned as two embeddings);
    # a table function; an HTTP request to a connection (planned as an ai_query of the request's parts); a
    # document to parse (an ai_query of the document endpoint)
    kind: Literal["query", "task", "embed", "similarity", "table", "http", "document"] = "query"
    prompt: str = ""  # a task's prompt: {content} and the names of its constant parameters are filled in
    answer: str = "text"  # how a task's reply becomes its value (see aifuncs/functions/tasks.py)
    labels: tuple[str, ...] = ()  # a task's fixed labels (ai_analyze_sentiment)
    max_tokens: int = 512  # a task's reply length
    aggregate: bool = False  # answers a group (GROUP BY): planned as a function of list(expr)
    # What is embedded for each label when an embedding model classifies: phrasings with {label} (a label's
    # score is its phrasings' mean similarity), or per fixed label its own example texts.
    label_text: tuple[str, ...] = ("{label}",)
    label_examples: tuple[tuple[str, tuple[str, ...]], ...] = ()
    lexicon: str | None = None  # "sentiment": a sentiment lexicon (VADER) weighs in beside the embeddings

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
        label_text=_phrasings(data.get("label_text", "{label}")),
        label_examples=tuple((k, _phrasings(v)) for k, v in data.get("label_examples", {}).items()),
        lexicon=data.get("lexicon"),
    )


def _phrasings(value: str | list[str]) -> tuple[str, ...]:
    return (value,) if isinstance(value, str) else tuple(value)


@functools.cache
def _builtin_specs() -> dict[str, FunctionSpec]:
    return _read_folder(resource_dir("udfs"))


_user_cache: dict[tuple[str, float], dict[str, FunctionSpec]] = {}


def user_folder() -> Path:
    """Where users put their own function specs: AIFUNCS_HOME/udfs/*.toml."""
    return home() / "udfs"


def _user_specs() -> dict[str, FunctionSpec]:
    folder = user_folder()
    try:
        stamp = folder.stat().st_mtime
    except FileNotFoundError:
        return {}
    key = (str(folder), stamp)
    if key not in _user_cache:  # re-read when a spec is added or removed
        _user_cache.clear()
        _user_cache[key] = _read_folder(folder)
    return _user_cache[key]


def _read_folder(folder: Path) -> dict[str, FunctionSpec]:
    specs = {}
    for path in sorted(folder.glob("*.toml")):
        try:
            spec = _load(tomllib.loads(path.read_text()))
        except (tomllib.TOMLDecodeError, KeyError, TypeError) as error:
            raise ConfigError(f"The function spec {path} is invalid: {error}") from None
        specs[spec.name.lower()] = spec
    return specs


def all_specs() -> dict[str, FunctionSpec]:
    user = _user_specs()
    return {**user, **_builtin_specs()} if user else _builtin_specs()  # built-ins cannot be replaced


def get_spec(name: str) -> FunctionSpec | None:
    return all_specs().get(name.lower())


def define(toml_text: str) -> FunctionSpec:
    """Add a function of your own from its TOML spec (the format of `udfs/`); SQL can call it at once.

    The spec is checked, then kept in AIFUNCS_HOME/udfs/<name>.toml, so every process sees it."""
    try:
        spec = _load(tomllib.loads(toml_text))
    except (tomllib.TOMLDecodeError, KeyError, TypeError) as error:
        raise ConfigError(f"Invalid function spec: {error}") from None
    if spec.name.lower() in _builtin_specs():
        raise ConfigError(f"{spec.name} is a built-in function; give yours another name.")
    if spec.kind != "task" or not spec.prompt:
        raise ConfigError(f'{spec.name}: a function of your own is a task: kind = "task" and a prompt.')
    columns = [p for p in spec.params if p.kind == "column"]
    if len(columns) != 1 or "{" + columns[0].name + "}" not in spec.prompt:
        raise ConfigError(
            f"{spec.name}: a task has one column parameter, and its prompt holds it as {{name}} of that parameter."
        )
    if spec.answer not in ANSWERS:
        raise ConfigError(
            f"{spec.name}: answer must be one of {', '.join(sorted(ANSWERS))}, not {spec.answer!r}."
        )
    folder = user_folder()
    private_dir(folder)
    target = folder / f"{spec.name.lower()}.toml"
    with open(os.open(target, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o600), "w") as file:
        file.write(toml_text)
    os.chmod(target, 0o600)  # a spec written before keeps the mode it was made with
    return spec


ANSWERS = {"text", "label", "boolean", "struct", "mask"}
