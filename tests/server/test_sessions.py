"""The server makes one session per request, on the runtime and catalog its `app()` was given (or resolved once):
two apps in one process keep apart, no module under aifuncs/server/ looks the process's runtime or catalog up
but `app()`, and the kept bindings of the query routes are keyed by `bind_key`."""

from __future__ import annotations

import ast
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from starlette.testclient import TestClient

import aifuncs
import aifuncs.governance as gov
from aifuncs.catalog import Catalog, Endpoint, default_catalog
from aifuncs.governance import current
from aifuncs.providers import Provider, provider_class
from aifuncs.runtime import Budget, RequestContext, Runtime
from aifuncs.runtime._usage import UsageRow
from aifuncs.server import app
from aifuncs.session import Session, bind_key

SERVER = Path(aifuncs.__file__).parent / "server"
_LOOKUPS = {"default_runtime", "default_catalog"}


def _lookups(path: Path) -> list[tuple[int, str | None]]:
    """Each mention of the process's runtime or catalog lookup in `path` (imports aside): its line, and the
    top-level function it is in."""
    found: list[tuple[int, str | None]] = []

    def visit(node: ast.AST, function: str | None) -> None:
        for child in ast.iter_child_nodes(node):
            inside = function
            if function is None and isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
                inside = child.name
            name = (
                child.id
                if isinstance(child, ast.Name)
                else child.attr
                if isinstance(child, ast.Attribute)
                else None
            )
            if name in _LOOKUPS:
                found.append((child.lineno, function))
            visit(child, inside)

    visit(ast.parse(path.read_text()), None)
    return found


def test_only_app_looks_up_the_process_runtime_and_catalog() -> None:
    """`app()` is the server's public edge: the one place under aifuncs/server/ that reads the process's
    runtime or catalog; everything else works in the session of its request."""
    elsewhere = [
        f"{path.relative_to(SERVER.parent)}:{line} (in {function or 'the module'})"
        for path in sorted(SERVER.rglob("*.py"))
        for line, function in _lookups(path)
        if not (path.name == "_app.py" and path.parent == SERVER and function == "app")
    ]
    assert elsewhere == []
    assert [f for _, f in _lookups(SERVER / "_app.py")] == ["app", "app"]  # the rule reads what it must


def _counted(runtime: Runtime) -> list[UsageRow]:
    """The usage rows `runtime` records from now on (each still written to the home's log as usual)."""
    rows: list[UsageRow] = []
    record = runtime.usage.record

    def recording(row: UsageRow) -> None:
        rows.append(row)
        record(row)

    runtime.usage.record = recording  # type: ignore[method-assign]
    return rows


def _building(built: list[str]) -> Callable[[Endpoint], Provider]:
    """A runtime's provider factory: the in-process provider of the endpoint's kind, noted when built."""

    def build(endpoint: Endpoint) -> Provider:
        built.append(endpoint.name)
        return provider_class(endpoint.kind)(endpoint)

    return build


def _wait_for(condition: Callable[[], bool], timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


@pytest.fixture
def alice(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.delenv("AIFUNCS_TOKEN", raising=False)
    # models in the app's own process: each runtime builds its providers with the factory it was given
    monkeypatch.setenv("AIFUNCS_SERVE_MODEL_WORKERS", "0")
    aifuncs.endpoints.create("double", kind="python", function="sample_models:doubled", returns="DOUBLE")
    gov.create_user("alice")
    aifuncs.endpoints.update_permissions("double", [{"user_name": "alice", "permission_level": "CAN_QUERY"}])
    return gov.create_token("alice")


def test_two_apps_on_two_runtimes_keep_their_requests_apart(alice: str) -> None:
    built_a: list[str] = []
    built_b: list[str] = []
    runtime_a, runtime_b = Runtime(_building(built_a)), Runtime(_building(built_b))
    rows_a, rows_b = _counted(runtime_a), _counted(runtime_b)
    headers = {"Authorization": f"Bearer {alice}"}

    def ask(client: TestClient, request_id: str) -> Any:
        body = {"inputs": [1.5, 2.0], "client_request_id": request_id, "usage_context": {"team": "growth"}}
        answer = client.post("/serving-endpoints/double/invocations", json=body, headers=headers)
        assert answer.status_code == 200, answer.text
        return answer.json()["predictions"]

    with TestClient(app(runtime=runtime_a)) as a, TestClient(app(runtime=runtime_b)) as b:
        assert [ask(a, f"a-{i}") for i in range(3)] == [[3.0, 4.0]] * 3
        _wait_for(lambda: len(rows_a) == 3)
        assert built_a == ["double"] and built_b == [] and rows_b == []  # B's runtime saw nothing
        assert ask(b, "b-0") == [3.0, 4.0]
        _wait_for(lambda: len(rows_b) == 1)
        assert built_b == ["double"] and len(rows_a) == 3  # nor did A's see B's request
    assert [r.client_request_id for r in rows_a] == ["a-0", "a-1", "a-2"]
    assert [r.client_request_id for r in rows_b] == ["b-0"]
    for row in rows_a + rows_b:  # each row in its request's session: its caller, origin and labels
        assert (row.requester, row.origin, row.usage_context) == ("alice", "rest", '{"team": "growth"}')


def test_an_app_takes_the_catalog_it_is_given(alice: str, tmp_path: Path) -> None:
    """`app(catalog=...)` serves that catalog's endpoints and takes its home's tokens, whatever AIFUNCS_HOME
    says later."""
    served = default_catalog()
    other = tmp_path / "other-home"
    other.mkdir()
    with TestClient(app(catalog=served)) as client, pytest.MonkeyPatch.context() as env:
        env.setenv("AIFUNCS_HOME", str(other))
        answer = client.post(
            "/serving-endpoints/double/invocations",
            json={"inputs": [2.0]},
            headers={"Authorization": f"Bearer {alice}"},
        )
        assert answer.status_code == 200, answer.text
        assert answer.json() == {"predictions": [4.0]}


def _session(**changes: Any) -> Session:
    base = Session(Runtime(), current(), default_catalog())
    return base.derive(**changes) if changes else base


def test_bind_key_names_every_input_of_a_binding_but_the_callers_own() -> None:
    session = _session()
    key = bind_key(session, "ai_query", "double", pa.float64(), 7, model_parameters={"t": 1})
    same = bind_key(session, "ai_query", "double", pa.float64(), 7, model_parameters={"t": 1})
    assert key == same
    # each request's own meters and labels are not part of it: a kept binding takes the caller's
    labelled = session.derive(context=RequestContext("rest", "id-1", (("team", "x"),)), budgets=(Budget(5),))
    assert bind_key(labelled, "ai_query", "double", pa.float64(), 7, model_parameters={"t": 1}) == key
    others = [
        bind_key(session, "ai_query", "double", pa.float64(), 8, model_parameters={"t": 1}),  # a revision
        bind_key(session, "ai_query", "double", pa.int64(), 7, model_parameters={"t": 1}),  # a request shape
        bind_key(session, "ai_query", "double", pa.float64(), 7, model_parameters={"t": 2}),  # parameters
        bind_key(session, "ai_query", "Double", pa.float64(), 7, model_parameters={"t": 1}),  # another name
        bind_key(
            session.derive(wait_for_limits=False),
            "ai_query",
            "double",
            pa.float64(),
            7,
            model_parameters={"t": 1},
        ),  # fmt: skip
        bind_key(_session(), "ai_query", "double", pa.float64(), 7, model_parameters={"t": 1}),  # a runtime
        bind_key(
            session.derive(base_catalog=Catalog(default_catalog().path)),
            "ai_query",
            "double",
            pa.float64(),
            7,
            model_parameters={"t": 1},
        ),  # another catalog object  # fmt: skip
    ]
    assert key not in others and len(set(others)) == len(others)


def test_bind_key_tells_a_principal_made_again_under_a_deleted_ones_name() -> None:
    gov.create_user("carol")
    first = Session(Runtime(), gov.identify(gov.create_token("carol")), default_catalog())
    gov.delete_principal("carol")
    gov.create_user("carol")
    again = first.derive(identity=gov.identify(gov.create_token("carol")))
    assert first.principal == again.principal  # equal as values (created_at is not compared)...
    assert bind_key(first, "ai_query", "m", None, 1) != bind_key(
        again, "ai_query", "m", None, 1
    )  # ...not here
