"""The package's floors run one way: no layer imports one above it, at module level or inside a function."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import aifuncs

PACKAGE = Path(aifuncs.__file__).parent

# Each layer may import only layers below it, and private helpers (aifuncs._types, aifuncs._endpoint...),
# which import no layer. Lowest first.
FLOORS = [
    "aifuncs.storage",  # the shared stores' database: SQLite files or PostgreSQL
    "aifuncs.governance",
    "aifuncs.providers",
    "aifuncs.catalog",
    "aifuncs.functions",
    "aifuncs.runtime",
    "aifuncs.session",
    "aifuncs.planner",
    "aifuncs.engines",
    "aifuncs.engines.duckdb",
    "aifuncs.engines.pandas",
    "aifuncs.engines.spark",
    "aifuncs.spark",
    "aifuncs.index",
    "aifuncs.jobs",
    "aifuncs.cache",
    "aifuncs.workers",  # model worker processes a server runs in-process models in
    "aifuncs.server",
    "aifuncs.cli",
]


def _unit(module: str) -> str | None:
    """The layer a module belongs to: its package under aifuncs (engines' public modules on their own)."""
    parts = module.split(".")
    if parts[0] != "aifuncs" or len(parts) == 1:
        return None
    if parts[1] == "engines" and len(parts) > 2 and not parts[2].startswith("_"):
        return ".".join(parts[:3])
    return ".".join(parts[:2])


def _imports() -> dict[str, set[str]]:
    edges: dict[str, set[str]] = defaultdict(set)
    for path in PACKAGE.rglob("*.py"):
        module = ".".join(("aifuncs", *path.relative_to(PACKAGE).with_suffix("").parts)).removesuffix(
            ".__init__"
        )
        source = _unit(module)
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            for name in names:
                target = _unit(name)
                if source and target and target != source:
                    edges[source].add(target)
    return edges


def test_no_layer_imports_one_above_it() -> None:
    edges = _imports()
    upward = [
        f"{source} imports {target}"
        for source, targets in edges.items()
        if source in FLOORS
        for target in targets
        if target in FLOORS and FLOORS.index(target) > FLOORS.index(source)
    ]
    assert upward == []


def test_private_helpers_import_no_layer() -> None:
    edges = _imports()
    helpers = {source: targets for source, targets in edges.items() if source.split(".")[1].startswith("_")}
    assert {
        source: targets & set(FLOORS) for source, targets in helpers.items() if targets & set(FLOORS)
    } == {}


def test_the_planner_knows_no_engine_and_the_runtime_no_sql() -> None:
    edges = _imports()
    assert not {t for t in edges["aifuncs.planner"] if t.startswith("aifuncs.engines")}
    assert not edges["aifuncs.runtime"] & {"aifuncs.planner", "aifuncs.engines", "aifuncs.engines.duckdb"}
    assert "aifuncs.index" not in edges["aifuncs.planner"]  # vector indexes reach it through EngineHooks


MAX_LINES = 500  # no module may grow past it: split it along its jobs


def test_no_module_is_over_500_lines() -> None:
    long = {
        str(path.relative_to(PACKAGE.parent))
        for path in PACKAGE.rglob("*.py")
        if len(path.read_text().splitlines()) > MAX_LINES
    }
    assert long == set()
