"""schemathesis over the server's /openapi.json: generated requests to every route find no server error (500),
and no route that declares a bearer token answers 2xx without one or with a wrong one."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import ignored_auth
from servers import free_port, running

_token: dict[str, str] = {}


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    root = tmp_path_factory.mktemp("schemathesis")
    patch = pytest.MonkeyPatch()
    patch.setenv("AIFUNCS_HOME", str(root / "home"))
    patch.delenv("AIFUNCS_TOKEN", raising=False)
    try:
        import aifuncs
        import aifuncs.governance as gov

        gov.create_user("admin", admin=True)  # every route reachable: the checks see past 403s
        _token["admin"] = gov.create_token("admin")
        aifuncs.endpoints.create("doubler", kind="python", function="sample_models:doubled", returns="DOUBLE")
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
        command = [sys.executable, "-m", "aifuncs.cli", "serve", "--port", str(port)]
        with running(command, url + "/health", root / "serve.log", env):
            yield schemathesis.openapi.from_url(url + "/openapi.json")
    finally:
        patch.undo()


def test_no_route_fails_or_ignores_its_token(served: Any) -> None:
    headers = {"Authorization": f"Bearer {_token['admin']}"}
    operations = [result.ok() for result in served.get_all_operations()]
    assert len(operations) > 30  # every route, each method

    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=12, deadline=None, database=None, suppress_health_check=list(HealthCheck))
        def generated(case: schemathesis.Case) -> None:
            case.call_and_validate(headers=headers, checks=[not_a_server_error, ignored_auth], timeout=30)

        generated()
