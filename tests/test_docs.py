"""The documentation cannot drift: the reference pages match the code they are generated from, the site
builds in strict mode (links and anchors checked), and every Python example in the README and the guides
runs, page by page, in order, in a fresh AIFUNCS_HOME."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from markdown.extensions.toc import slugify

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
PAGES = [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]
FENCE = re.compile(r"^```(?P<lang>[\w+-]*)\s*(?P<attrs>\{[^}]*\})?\s*$")
NO_RUN_REASON = re.compile(r"^<!-- no-run: \S.* -->$")
MAX_NO_RUN = 5  # marks stay rare: an example that cannot run is one readers cannot trust either


@dataclass(frozen=True)
class Block:
    page: str
    line: int  # of the block's first code line, 1-based
    code: str
    runnable: bool
    reason: str | None  # the comment just above a no-run block


def python_blocks(path: Path) -> list[Block]:
    lines = path.read_text().splitlines()
    blocks, i = [], 0
    while i < len(lines):
        match = FENCE.match(lines[i])
        if not match or not match.group("lang"):
            i += 1
            continue
        end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
        if match.group("lang") in ("python", "py"):
            no_run = ".no-run" in (match.group("attrs") or "")
            above = lines[i - 1] if i else ""
            blocks.append(
                Block(
                    page=str(path.relative_to(ROOT)),
                    line=i + 2,
                    code="\n".join(lines[i + 1 : end]),
                    runnable=not no_run,
                    reason=above if no_run and NO_RUN_REASON.match(above) else None,
                )
            )
        i = end + 1
    return blocks


# Runs one page's blocks in one namespace, as a reader pasting them in order would; a block's line numbers
# in a traceback are the page's.
RUNNER = """
import json, sys, traceback
namespace = {"__name__": "__main__"}
for block in json.load(sys.stdin):
    code = "\\n" * (block["line"] - 1) + block["code"]
    try:
        exec(compile(code, block["page"], "exec"), namespace)
    except BaseException:
        traceback.print_exc()
        print(f"the block at {block['page']}:{block['line']} failed", file=sys.stderr)
        sys.exit(1)
"""

RUNNABLE = {str(p.relative_to(ROOT)): [b for b in python_blocks(p) if b.runnable] for p in PAGES}
RUNNABLE = {page: blocks for page, blocks in RUNNABLE.items() if blocks}


@pytest.fixture(scope="module")
def page_runs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, subprocess.Popen[str]]]:
    """Every page's examples started at once, each in its own process, folder and AIFUNCS_HOME."""
    runs = {}
    for page, blocks in RUNNABLE.items():
        folder = tmp_path_factory.mktemp(page.replace("/", "-"))
        env = {**os.environ, "AIFUNCS_HOME": str(folder / "home"), "AIFUNCS_PROGRESS": "off"}
        process = subprocess.Popen(
            [sys.executable, "-c", RUNNER],
            cwd=folder,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert process.stdin is not None
        process.stdin.write(json.dumps([b.__dict__ for b in blocks]))
        process.stdin.close()
        runs[page] = process
    yield runs
    for process in runs.values():
        if process.poll() is None:
            process.kill()
            process.wait()


@pytest.mark.parametrize("page", sorted(RUNNABLE))
def test_python_examples_run(page: str, page_runs: dict[str, subprocess.Popen[str]]) -> None:
    process = page_runs[page]
    assert process.stdout is not None and process.stderr is not None
    try:
        process.wait(timeout=240)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the examples of {page} did not finish in 240 s")
    out, err = process.stdout.read(), process.stderr.read()
    assert process.returncode == 0, err[-3000:]
    # `print(x)  # [...]`: the comment (up to a ';') is the value the reader is promised, checked as doctest would.
    for block in RUNNABLE[page]:
        for promised in re.findall(r"^\s*print\(.*\)\s*#\s*([\[({][^;]*?)\s*(?:;.*)?$", block.code, re.M):
            assert promised in out, (
                f"{page}:{block.line} promises {promised}, the run printed:\n{out[-2000:]}"
            )


def test_examples_that_do_not_run_are_few_and_say_why() -> None:
    skipped = [b for p in PAGES for b in python_blocks(p) if not b.runnable]
    unexplained = [f"{b.page}:{b.line}" for b in skipped if b.reason is None]
    assert not unexplained, f"no-run blocks need a '<!-- no-run: why -->' line right above: {unexplained}"
    assert len(skipped) <= MAX_NO_RUN, [f"{b.page}:{b.line}" for b in skipped]
    assert sum(len(blocks) for blocks in RUNNABLE.values()) >= 5  # the examples are run, not all skipped


def test_reference_pages_match_their_sources() -> None:
    result = subprocess.run(
        [sys.executable, str(DOCS / "gen_reference.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr


def test_site_builds_in_strict_mode(tmp_path: Path) -> None:
    recipe = (ROOT / "Makefile").read_text().split("\ndocs:", 1)[1].split("\n\n", 1)[0]
    assert "mkdocs build --strict" in recipe and "gen_reference.py --check" in recipe
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    for page in [*DOCS.glob("*.md"), *DOCS.glob("reference/*.md")]:
        built = tmp_path / "site" / page.relative_to(DOCS).with_suffix("") / "index.html"
        if page.name == "index.md":
            built = tmp_path / "site" / page.relative_to(DOCS).parent / "index.html"
        assert built.exists(), (
            f"{page.relative_to(ROOT)} is missing from the site (add it to mkdocs.yml's nav)"
        )


def _anchors(path: Path) -> set[str]:
    text = re.sub(r"^```.*?^```", "", path.read_text(), flags=re.M | re.S)
    return {slugify(re.sub(r"[`*]", "", h), "-") for h in re.findall(r"^#{1,6} (.+)$", text, re.M)}


def test_readme_links_reach_pages_and_anchors() -> None:
    # mkdocs checks the pages' links; the README is outside the site, so its links are checked here.
    readme = ROOT / "README.md"
    links = re.findall(r"\]\(([^)\s]+)\)", readme.read_text())
    local = [link for link in links if not re.match(r"[a-z]+://", link)]
    assert len(local) >= 10
    for link in local:
        target, _, anchor = link.partition("#")
        path = (readme.parent / target) if target else readme
        assert path.is_file(), f"README links to {link}, which does not exist"
        if anchor:
            assert anchor in _anchors(path), f"README links to {link}, whose page has no such heading"


def test_readme_stays_short_and_keeps_the_ci_command() -> None:
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 170
    # .ci/run runs "exactly the README's test command".
    assert "make test" in (ROOT / ".ci" / "run").read_text()
    assert "make test   # install .[dev,local,spark], lint, type-check and run the whole test suite" in text
    assert "2026-12-02" in text and "| benchmark |" in text  # current figures, with their date and commits
