"""The UI in a real Chromium (Debian's, driven by Playwright) against a real `aifuncs serve`: sign in with the
owner's link, see the endpoints, compare two endpoints in the playground, estimate and run SQL, search the
request log. A console error or a request that leaves 127.0.0.1 fails the test; each saves screenshots."""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from servers import FakeServer, free_port, running

import aifuncs
import aifuncs.governance as gov

CHROMIUM = "/usr/bin/chromium"
pytestmark = pytest.mark.skipif(
    not Path(CHROMIUM).exists(), reason="chromium is installed by make test-servers"
)


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        found = p.chromium.launch(executable_path=CHROMIUM)
        yield found
        found.close()


def test_owner_signs_in_compares_endpoints_runs_sql_and_searches_the_log(
    browser: Any, home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AIFUNCS_TOKEN", raising=False)
    shots = Path(os.environ.get("AIFUNCS_UI_SCREENSHOTS") or tmp_path)
    with FakeServer(keep_bodies=True) as upstream:
        for name, price in (("gpt-small", 0.15), ("gpt-large", 2.5)):
            aifuncs.endpoints.create(name, kind="openai", model=name, base_url=upstream.url + "/v1",
                                     usd_per_1m_input_tokens=price, usd_per_1m_output_tokens=price * 4,
                                     description=f"{name} behind the team's gateway")  # fmt: skip
            aifuncs.endpoints.put_ai_gateway(name, {"inference_table_config": {"enabled": True}})
        gov.create_user("alice")
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1].parent)}
        command = [sys.executable, "-m", "aifuncs.cli", "serve", "--port", str(port)]
        with running(command, base + "/health", tmp_path / "serve.log", env):
            from aifuncs.server.ui import sign_in_link

            context = browser.new_context(timezone_id="UTC", viewport={"width": 1360, "height": 900})
            page = context.new_page()
            problems: list[str] = []
            page.on(
                "console",
                lambda m: problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None,
            )
            page.on("pageerror", lambda e: problems.append(f"page error: {e}"))

            def only_here(route: Any) -> None:
                if route.request.url.startswith(base + "/"):
                    route.continue_()
                else:
                    problems.append(f"left 127.0.0.1: {route.request.url}")
                    route.abort()

            page.route("**/*", only_here)
            page.goto(sign_in_link(base, home))
            page.wait_for_url(re.compile(r".*/ui/endpoints$"))
            assert page.locator("text=gpt-small").count() >= 1

            page.goto(base + "/ui/playground?e=gpt-small&e=gpt-large")
            page.fill("#pg-system", "Answer in one sentence.")
            page.fill("#pg-prompt", "What does a vectorized UDF save?")
            page.click("#pg-run")
            page.locator("#answers .meta span").nth(5).wait_for()  # latency, tokens, cost of both
            assert "gpt-large" in page.url
            page.screenshot(path=str(shots / "ui-playground.png"), full_page=True)

            page.goto(base + "/ui/sql")
            page.fill(
                "#sql-text",
                "SELECT x, ai_query('gpt-small', 'Summarize ticket ' || x) AS summary\nFROM range(5) t(x)",
            )
            page.click("#sql-run")
            page.wait_for_selector("#sql-state:has-text('succeeded')", timeout=60_000)
            assert "Estimated cost" in page.inner_text("#sql-cost")
            page.screenshot(path=str(shots / "ui-sql.png"), full_page=True)

            page.goto(base + "/ui/endpoints/gpt-small?tab=logs&q=ticket%203")
            rows = page.locator("table.log tbody tr[id]")
            assert rows.count() == 1
            rows.first.locator("button").click()
            page.wait_for_selector("tr.detail pre")
            page.screenshot(path=str(shots / "ui-request-log.png"), full_page=True)

            page.goto(base + "/ui/endpoints")
            page.screenshot(path=str(shots / "ui-endpoints.png"), full_page=True)
            page.goto(base + "/ui/endpoints/gpt-small")
            page.wait_for_selector("#charts .uplot")
            page.screenshot(path=str(shots / "ui-endpoint.png"), full_page=True)
            context.close()
            assert problems == []
