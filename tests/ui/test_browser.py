"""The UI in a real Chromium (Debian's, driven by Playwright) against a real `aifuncs serve`: sign in with the
owner's link, see the endpoints, compare two endpoints in the playground, estimate and run SQL, search the
request log; sign in with a token, create an endpoint, grant CAN_QUERY and see it from the grantee's own
session, with the keyboard and labels checked on the way. A console error, a request that leaves 127.0.0.1 or
a form control without a label fails the test; each saves screenshots."""

from __future__ import annotations

import os
import re
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from servers import FakeServer, free_port, running

import aifuncs
import aifuncs.governance as gov
from aifuncs import ServedEntity

CHROMIUM = "/usr/bin/chromium"
PIECES, PIECE_DELAY_S = 12, 0.3  # the playground's fake model writes its answer in about 3.3 s
STREAM_S = 60  # the most a stream may take to show on a loaded machine
# The text of a column whose answer is still streaming, once it has some (a truthy value ends the wait).
STREAMING_TEXT = """() => {
    const box = document.querySelector("#answers .answer[data-state=streaming]");
    const text = box && box.querySelector(".text").textContent;
    return text ? text : null;
}"""
# Every column of the playground has its answer or its error.
SETTLED = """() => [...document.querySelectorAll("#answers .answer")]
    .every((box) => box.dataset.state === "done" || box.dataset.state === "error")"""


class Watched:
    """A browser context on one server whose pages record what fails them: console errors, page errors and
    requests to anywhere but the server."""

    def __init__(self, browser: Any, base: str) -> None:
        self.base = base
        self.problems: list[str] = []
        self.context = browser.new_context(timezone_id="UTC", viewport={"width": 1360, "height": 900})

    def page(self) -> Any:
        page = self.context.new_page()
        problems = self.problems
        page.on(
            "console",
            lambda m: problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None,
        )
        page.on("pageerror", lambda e: problems.append(f"page error: {e}"))

        def only_here(route: Any) -> None:
            if route.request.url.startswith(self.base + "/"):
                route.continue_()
            else:
                problems.append(f"left 127.0.0.1: {route.request.url}")
                route.abort()

        page.route("**/*", only_here)
        return page


def unlabelled(page: Any) -> list[str]:
    """The page's visible form controls that have no label (a <label for>, a wrapping label or aria-label)."""
    return list(
        page.evaluate(
            """() => [...document.querySelectorAll("input, select, textarea")]
                .filter((el) => el.type !== "hidden" && el.offsetParent !== null)
                .filter((el) => el.labels.length === 0 && !el.getAttribute("aria-label"))
                .map((el) => el.outerHTML.slice(0, 80))"""
        )
    )


def focused(page: Any) -> str:
    """The focused element: its id, else its text."""
    return str(page.evaluate("() => document.activeElement.id || document.activeElement.textContent.trim()"))


def _ms(fact: str) -> float:
    """The milliseconds a figure shows ("first token 123 ms")."""
    found = re.search(r"([0-9]+) ms", fact)
    assert found is not None, fact
    return float(found.group(1))


def serve(tmp_path: Path) -> tuple[str, Any]:
    """A real `aifuncs serve` on a free loopback port: its base URL and the context manager that runs it."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1].parent)}
    command = [sys.executable, "-m", "aifuncs.cli", "serve", "--port", str(port)]
    return base, running(command, base + "/health", tmp_path / "serve.log", env)


@pytest.fixture(scope="module")  # Playwright's sync API holds an event loop on the main thread while it is open:
def browser() -> Iterator[Any]:  # closed after this module, so later tests' asyncio.run() work
    from playwright import sync_api  # the dev extra; its browsers are never downloaded

    if not Path(CHROMIUM).exists():
        pytest.fail(f"No Chromium at {CHROMIUM}: make test-servers installs it (apt-get install chromium).")
    with sync_api.sync_playwright() as p:
        found = p.chromium.launch(executable_path=CHROMIUM)
        yield found
        found.close()


def test_owner_signs_in_compares_endpoints_runs_sql_and_searches_the_log(
    browser: Any, home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AIFUNCS_TOKEN", raising=False)
    shots = Path(os.environ.get("AIFUNCS_UI_SCREENSHOTS") or tmp_path)
    with FakeServer(keep_bodies=True, stream_pieces=PIECES, stream_delay_s=PIECE_DELAY_S) as upstream:
        for name, price in (("gpt-small", 0.15), ("gpt-large", 2.5)):
            aifuncs.endpoints.create(name, kind="openai", model=name, base_url=upstream.url + "/v1",
                                     usd_per_1m_input_tokens=price, usd_per_1m_output_tokens=price * 4,
                                     description=f"{name} behind the team's gateway")  # fmt: skip
            aifuncs.endpoints.put_ai_gateway(name, {"inference_table_config": {"enabled": True}})
        aifuncs.endpoints.create(
            "gpt-split",
            served_entities=[
                ServedEntity(name, "openai", {"model": name, "base_url": upstream.url + "/v1"}, share)
                for name, share in (("current", 90), ("candidate", 10))
            ],
            description="a candidate model on a tenth of the traffic",
        )
        gov.create_user("alice")
        base, server = serve(tmp_path)
        with server:
            from aifuncs.server.ui import sign_in_link

            watched = Watched(browser, base)
            context, problems = watched.context, watched.problems
            page = watched.page()
            page.goto(sign_in_link(base, home))
            page.wait_for_url(re.compile(r".*/ui/endpoints$"))
            assert page.locator("text=gpt-small").count() >= 1

            page.goto(base + "/ui/playground?e=gpt-small&e=gpt-large")
            page.fill("#pg-system", "Answer in one sentence.")
            page.fill("#pg-prompt", "What does a vectorized UDF save?")
            page.click("#pg-run")
            # the model writes slowly: a column shows part of its answer while the stream is still going
            partial = page.wait_for_function(STREAMING_TEXT, timeout=STREAM_S * 1000).json_value()
            page.locator("#answers [data-fact=cost]").nth(1).wait_for()  # both answers' figures
            assert upstream.stats.streams_done == 2
            whole = "echo: What does a vectorized UDF save?"
            assert whole.startswith(partial) and 0 < len(partial) < len(whole)  # shown before the end
            for column in page.locator("#answers .answer").all():
                assert column.get_attribute("data-state") == "done"
                assert column.locator(".text").inner_text() == whole
                ttft = column.locator("[data-fact=ttft]").inner_text()  # "first token 123 ms"
                latency = column.locator("[data-fact=latency]").inner_text()
                assert _ms(ttft) < _ms(latency) and _ms(latency) >= (PIECES - 1) * PIECE_DELAY_S * 1000
            assert page.inner_text("#answers .answer:first-child").startswith("gpt-small")
            assert "gpt-large" in page.url
            page.screenshot(path=str(shots / "ui-playground.png"), full_page=True)

            # Stop closes both streams: the server sees it and stops its upstream requests at once
            page.click("#pg-run")
            page.wait_for_function(STREAMING_TEXT, timeout=STREAM_S * 1000)
            page.click("#pg-stop")
            page.locator("#answers .answer[data-state=stopped]").nth(1).wait_for()
            assert page.locator("#answers [data-fact=stopped]").count() == 2
            deadline = time.monotonic() + STREAM_S
            while len(upstream.stats.streams_cut) < 2 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert len(upstream.stats.streams_cut) == 2 and upstream.stats.streams_done == 2
            assert all(sent < PIECES for sent in upstream.stats.streams_cut)

            # a guardrail's refusal reads as such in its column; the other column answers
            aifuncs.endpoints.put_ai_gateway(
                "gpt-large",
                {
                    "inference_table_config": {"enabled": True},
                    "guardrails": {"input": {"invalid_keywords": ["Project Falcon"]}},
                },
            )
            page.fill("#pg-prompt", "What is Project Falcon?")
            large = page.locator("#answers .answer").nth(1)
            # the server reads the catalog's new revision within a second
            deadline = time.monotonic() + STREAM_S
            before = len(problems)
            while True:
                page.click("#pg-run")
                page.wait_for_function(SETTLED, timeout=STREAM_S * 1000)
                if large.get_attribute("data-state") == "error" or time.monotonic() > deadline:
                    break
            assert large.get_attribute("data-state") == "error"
            assert "blocked by the input guardrail" in large.locator(".text").inner_text()
            refused = "console error: Failed to load resource: the server responded with a status of 400 (Bad Request)"
            while refused not in problems[before:] and time.monotonic() < deadline:
                page.wait_for_timeout(20)  # lets Playwright deliver the page's console events
            assert problems[before:] == [refused]  # Chromium logs the refusal's 400: that one is expected
            del problems[before:]
            small = page.locator("#answers .answer").nth(0)
            assert small.get_attribute("data-state") == "done"
            assert small.locator(".text").inner_text() == "echo: What is Project Falcon?"

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
            rows.first.locator("a").click()  # opens in place (htmx); a page of its own without script
            page.wait_for_selector("tr.detail pre")
            page.screenshot(path=str(shots / "ui-request-log.png"), full_page=True)

            page.goto(base + "/ui/endpoints")
            page.screenshot(path=str(shots / "ui-endpoints.png"), full_page=True)
            page.goto(base + "/ui/usage?by=endpoint&days=7")
            assert page.locator("tbody tr", has_text="gpt-small").count() == 1
            page.screenshot(path=str(shots / "ui-usage.png"), full_page=True)
            page.goto(base + "/ui/endpoints/gpt-small")
            page.wait_for_selector("#charts .uplot")
            page.screenshot(path=str(shots / "ui-endpoint.png"), full_page=True)

            # the traffic split, edited on the endpoint page: one percentage per served entity, fallback on
            page.goto(base + "/ui/endpoints/gpt-split")
            shares = page.locator("#entities tbody tr [data-share]")
            assert shares.all_inner_texts() == ["90%", "10%"]
            assert unlabelled(page) == []
            page.fill("#share-1", "60")
            page.fill("#share-2", "40")
            page.check("#fb-on")
            page.click("text=Save traffic split")
            page.wait_for_url(re.compile(r".*saved=traffic$"))
            assert shares.all_inner_texts() == ["60%", "40%"]
            assert page.inner_text("#fallback").startswith("on")
            assert [e.traffic_percentage for e in aifuncs.endpoints.get("gpt-split").entities] == [60, 40]
            top, form = page.locator("#entities").bounding_box(), page.locator("#traffic").bounding_box()
            height = form["y"] + form["height"] - top["y"] + 60
            clip = {"x": 0, "y": top["y"] - 50, "width": 1360, "height": height}
            page.screenshot(path=str(shots / "ui-traffic.png"), clip=clip, full_page=True)
            page.goto(base + "/ui/endpoints")
            listed = page.locator("tbody tr", has_text="gpt-split").locator("[data-share]")
            assert listed.all_inner_texts() == ["60%", "40%"]
            context.close()
            assert problems == []


def test_a_token_holder_signs_in_creates_an_endpoint_and_grants_a_user_who_sees_it_at_once(
    browser: Any, home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AIFUNCS_TOKEN", raising=False)
    shots = Path(os.environ.get("AIFUNCS_UI_SCREENSHOTS") or tmp_path)
    gov.create_user("dana", admin=True)
    gov.create_user("alice")
    tokens = {name: gov.create_token(name) for name in ("dana", "alice")}
    with FakeServer() as upstream:
        base, server = serve(tmp_path)
        with server:
            admin, grantee = Watched(browser, base), Watched(browser, base)
            page = admin.page()
            page.goto(base + "/ui/endpoints")  # not signed in: the sign-in page, the token field focused
            page.wait_for_url(re.compile(r".*/ui/login\?next="))
            assert focused(page) == "token" and unlabelled(page) == []
            page.screenshot(path=str(shots / "ui-sign-in.png"), full_page=True)
            page.keyboard.type(tokens["dana"])
            page.keyboard.press("Tab")
            assert focused(page) == "Sign in"
            page.keyboard.press("Enter")
            page.wait_for_url(base + "/ui/endpoints")
            assert "dana" in page.inner_text("header")

            # alice signs in her own browser before she may see anything
            hers = grantee.page()
            hers.goto(base + "/ui/endpoints")
            hers.fill("#token", tokens["alice"])
            hers.click("button:has-text('Sign in')")
            hers.wait_for_url(base + "/ui/endpoints")
            assert "No endpoints you may see yet" in hers.inner_text("main")

            # create an endpoint with the keyboard: name, kind, description in tab order
            assert unlabelled(page) == []
            page.focus("#new-name")
            page.keyboard.type("support-bot")
            page.keyboard.press("Tab")
            assert focused(page) == "new-kind"
            page.select_option("#new-kind", "openai")
            page.keyboard.press("Tab")
            assert focused(page) == "new-desc"
            page.keyboard.type("Answers support tickets")
            page.fill(
                "#new-options",
                f'{{"model": "gpt-4o-mini", "base_url": "{upstream.url}/v1", "usd_per_1m_input_tokens": 0.15}}',
            )
            page.screenshot(path=str(shots / "ui-create.png"), full_page=True)
            page.click("text=Create endpoint")
            page.wait_for_url(base + "/ui/endpoints/support-bot")
            assert "Answers support tickets" in page.inner_text("main")
            assert "egress_checked" not in page.content()

            # grant CAN_QUERY to alice from the permissions tab, by keyboard
            page.click("nav.tabs >> text=Permissions")
            page.wait_for_url(base + "/ui/endpoints/support-bot?tab=permissions")
            assert unlabelled(page) == []
            page.focus("#pm-type")
            page.keyboard.press("Tab")
            assert focused(page) == "pm-name"
            page.keyboard.type("alice")
            page.keyboard.press("Tab")
            assert focused(page) == "pm-level" and page.input_value("#pm-level") == "CAN_QUERY"
            page.keyboard.press("Tab")
            assert focused(page) == "Grant"
            page.keyboard.press("Enter")
            page.wait_for_selector("table >> text=alice")
            page.screenshot(path=str(shots / "ui-permissions.png"), full_page=True)

            # alice's session sees it now: listed as hers to query, no edit controls, and it answers
            hers.reload()
            row = hers.locator("tbody tr", has_text="support-bot")
            assert row.locator("td").last.inner_text() == "query"  # her level, in the "You" column
            hers.goto(base + "/ui/endpoints/support-bot")
            assert hers.locator("text=Save config").count() == 0
            assert hers.locator("text=Delete endpoint").count() == 0
            hers.goto(base + "/ui/playground?e=support-bot")
            hers.fill("#pg-prompt", "Where is my parcel?")
            hers.click("#pg-run")
            hers.locator("#answers [data-fact=cost]").wait_for()
            assert upstream.stats.requests == 1
            hers.screenshot(path=str(shots / "ui-grantee.png"), full_page=True)

            # a delete asks first, on a page whose Cancel has the focus
            page.goto(base + "/ui/endpoints/support-bot")
            page.click("text=Delete endpoint")
            page.wait_for_selector("h1:has-text('Delete support-bot?')")
            assert focused(page) == "Cancel"
            page.screenshot(path=str(shots / "ui-confirm-delete.png"), full_page=True)
            page.keyboard.press("Enter")
            page.wait_for_url(base + "/ui/endpoints/support-bot")
            for path in ("/ui/usage", "/ui/tokens", "/ui/principals", "/ui/sql", "/ui/playground"):
                page.goto(base + path)
                assert unlabelled(page) == [], path
            admin.context.close()
            grantee.context.close()
            assert admin.problems + grantee.problems == []
