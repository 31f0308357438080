"""The UI through Starlette's TestClient on the real app (real catalog, governance, DuckDB), with a fake
OpenAI-compatible upstream: `ui.client("alice")` is a browser signed in as alice (a token's session)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from servers import FakeServer
from starlette.testclient import TestClient

import aifuncs
import aifuncs.governance as gov

BASE = "http://testserver"


@dataclass
class Ui:
    app: object
    tokens: dict[str, str]
    upstream: FakeServer
    home: Path

    def client(self, who: str | None = None) -> TestClient:
        client = TestClient(self.app, base_url=BASE, follow_redirects=False)  # type: ignore[arg-type]
        if who is not None:
            signed = client.post("/ui/login", data={"token": self.tokens[who], "next": "/ui/endpoints"})
            assert signed.status_code == 303, signed.text
        return client

    @staticmethod
    def csrf(client: TestClient, path: str = "/ui/tokens") -> str:
        """The session's CSRF token, as a page carries it."""
        found = re.search(r'name="csrf" value="([0-9a-f]+)"', client.get(path).text)
        assert found is not None
        return found.group(1)


@pytest.fixture
def ui(home: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Ui]:
    monkeypatch.delenv("AIFUNCS_TOKEN", raising=False)
    gov.create_user("admin", admin=True)
    for name in ("alice", "bob", "mallory"):
        gov.create_user(name)
    tokens = {name: gov.create_token(name) for name in ("admin", "alice", "bob", "mallory")}
    with FakeServer(keep_bodies=True) as upstream:
        aifuncs.endpoints.create(
            "llm", kind="openai", model="m", base_url=upstream.url + "/v1",
            usd_per_1m_input_tokens=1.0, usd_per_1m_output_tokens=2.0,
        )  # fmt: skip
        aifuncs.endpoints.update_permissions(
            "llm",
            [{"user_name": "alice", "permission_level": "CAN_QUERY"},
             {"user_name": "bob", "permission_level": "CAN_VIEW"}],
        )  # fmt: skip
        from aifuncs.server import app

        server = app()  # its bound calls are its own: another test's app (another home) keeps its own
        with TestClient(server):  # the lifespan: the runtime adopts the app's loop
            yield Ui(server, tokens, upstream, home)
