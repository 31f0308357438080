"""A real `aifuncs serve` process with four principals and a fake upstream that records what it receives.

    admin    an admin user (a stored one, not the home's owner)
    alice    CAN_QUERY on `llm`
    bob      CAN_VIEW on `llm`
    mallory  no grant at all

The home's owner (this test process) made everything; `upstream` keeps every body it was sent, so a test can
assert that a secret's value or a blocked word never reached it. `serve(extra_env=..., args=...)` starts another
server of the same home (e.g. with a secret in its environment).
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from servers import FakeServer, free_port, running

import aifuncs
import aifuncs.governance as gov

PRINCIPALS = ("admin", "alice", "bob", "mallory")


@dataclass
class Secured:
    url: str
    tokens: dict[str, str]
    upstream: FakeServer
    home: Path
    logs: Path  # the folder of the server's log files (serve-PORT.log)
    env: dict[str, str] = field(default_factory=dict)

    def headers(self, who: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[who]}"}

    def call(self, who: str, method: str, path: str, **kwargs: Any) -> httpx.Response:
        return httpx.request(method, self.url + path, headers=self.headers(who), timeout=60, **kwargs)

    def upstream_saw(self, text: str) -> bool:
        """Whether `text` appears anywhere in what the upstream received (bodies and headers)."""
        stats = self.upstream.stats
        return any(text in str(body) for body in stats.bodies) or any(text in value for value in stats.auth)


Serve = Callable[..., contextlib.AbstractContextManager[str]]


@pytest.fixture
def serve(home: Path, tmp_path: Path) -> Serve:
    """Start `aifuncs serve` on this home: `with serve(extra_env={...}, args=[...]) as url: ...`."""

    @contextlib.contextmanager
    def start(extra_env: dict[str, str] | None = None, args: list[str] | None = None) -> Iterator[str]:
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1]), **(extra_env or {})}
        env.pop("AIFUNCS_TOKEN", None)
        command = [sys.executable, "-m", "aifuncs.cli", "serve", "--port", str(port), *(args or [])]
        with running(command, url + "/health", tmp_path / f"serve-{port}.log", env):
            yield url

    return start


@pytest.fixture
def secured(home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, serve: Serve) -> Iterator[Secured]:
    monkeypatch.delenv("AIFUNCS_TOKEN", raising=False)
    gov.create_user("admin", admin=True)
    for name in PRINCIPALS[1:]:
        gov.create_user(name)
    tokens = {name: gov.create_token(name) for name in PRINCIPALS}
    with FakeServer(keep_bodies=True) as upstream:
        aifuncs.endpoints.create("llm", kind="openai", model="m", base_url=upstream.url + "/v1")
        aifuncs.endpoints.update_permissions(
            "llm",
            [{"user_name": "alice", "permission_level": "CAN_QUERY"},
             {"user_name": "bob", "permission_level": "CAN_VIEW"}],
        )  # fmt: skip
        with serve() as url:
            yield Secured(url, tokens, upstream, home, tmp_path)


@pytest.fixture
def principals(home: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The four principals (no endpoint, no server): their tokens, for a test that starts `serve` itself."""
    monkeypatch.delenv("AIFUNCS_TOKEN", raising=False)
    gov.create_user("admin", admin=True)
    for name in PRINCIPALS[1:]:
        gov.create_user(name)
    return {name: gov.create_token(name) for name in PRINCIPALS}
