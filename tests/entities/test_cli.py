"""Served entities from the shell: made, shown, replaced and given fallbacks with `aifuncs endpoints` and
`aifuncs gateway fallback`; bad input is one line and exit code 1, and changes nothing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from servers import FakeServer
from test_cli import run

import aifuncs
from aifuncs.cli import main


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_entities_made_from_flags_answer_their_share_and_show_their_routes(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with FakeServer() as prod, FakeServer() as candidate:
        code, out, err = cli(
            capsys,
            "endpoints", "create", "ads",
            "--entity", "prod=openai:80", "--entity", "candidate=openai:20",
            "--entity-option", f"prod.base_url={prod.url}/v1", "--entity-option", "prod.model=small",
            "--entity-option", f"candidate.base_url={candidate.url}/v1", "--entity-option", "candidate.model=big",
            "--entity-option", "candidate.max_concurrency=4",
        )  # fmt: skip
        assert code == 0, err
        made = aifuncs.endpoints.get("ads")
        assert [(e.name, e.kind, e.traffic_percentage) for e in made.entities] == [
            ("prod", "openai", 80),
            ("candidate", "openai", 20),
        ]
        assert made.entities[1].options["max_concurrency"] == 4  # JSON values, as -o takes them
        lines = out.splitlines()
        assert any(line.split()[:3] == ["prod", "openai", "80%"] and "model=small" in line for line in lines)
        assert any(line.split()[:3] == ["candidate", "openai", "20%"] for line in lines)
        assert "fallback     off" in out
        con = aifuncs.connect()
        con.execute("SELECT ai_query('ads', 'r' || i) FROM range(500) t(i)").fetchall()
        con.close()
        asked = (prod.stats.requests, candidate.stats.requests)
    assert sum(asked) == 500 and 50 <= asked[1] <= 150, asked  # 20% of 500 within 10 points


def test_get_json_round_trips_through_served_entities_on_update(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    assert cli(capsys, "endpoints", "create", "ads", "--entity", "a=python:100",
               "--entity-option", "a.function=sample_models:doubled")[0] == 0  # fmt: skip
    code, out, _ = cli(capsys, "endpoints", "get", "ads", "--json")
    shown = json.loads(out)
    shown["served_entities"].append(
        {
            "name": "b",
            "kind": "python",
            "options": {"function": "sample_models:doubled"},
            "traffic_percentage": 0,
        }
    )
    shown["served_entities"][0]["traffic_percentage"] = 100
    path = tmp_path / "ads.json"
    path.write_text(json.dumps(shown))  # the whole object `get --json` printed: its served_entities are read
    code, out, err = cli(capsys, "endpoints", "update", "ads", "--served-entities", str(path))
    assert code == 0, err
    updated = aifuncs.endpoints.get("ads")
    assert updated.version == 2 and [(e.name, e.traffic_percentage) for e in updated.entities] == [
        ("a", 100),
        ("b", 0),
    ]
    assert any(line.split()[:4] == ["b", "python", "0%", "(fallback"] for line in out.splitlines())
    listed = '[{"name": "c", "kind": "python", "options": {"function": "sample_models:doubled"}}]'
    assert cli(capsys, "endpoints", "update", "ads", "--served-entities", listed)[0] == 0  # JSON text
    assert [e.name for e in aifuncs.endpoints.get("ads").entities] == ["c"]
    code, out, _ = cli(capsys, "endpoints", "list")
    assert out.split()[:4] == ["ads", "python", "v3", "[1"]


def test_gateway_fallback_is_set_shown_and_keeps_the_other_settings(
    capsys: pytest.CaptureFixture[str],
) -> None:
    for name in ("ads", "backup"):
        aifuncs.endpoints.create(name, kind="python", function="sample_models:doubled")
    aifuncs.endpoints.set_rate_limits("ads", [{"calls": 100, "key": "endpoint"}])
    code, out, err = cli(capsys, "gateway", "fallback", "ads", "--enable", "--to", "backup")
    assert code == 0, err
    assert out.strip() == "Fallback of 'ads': on: endpoint 'backup'"
    gateway = aifuncs.endpoints.get_ai_gateway("ads")
    assert gateway["fallback_config"] == {"enabled": True, "endpoint": "backup"}
    assert gateway["rate_limits"] == [{"calls": 100, "key": "endpoint", "renewal_period": "minute"}]
    assert "fallback     on: endpoint 'backup'" in cli(capsys, "endpoints", "get", "ads")[1]
    code, out, _ = cli(capsys, "gateway", "fallback", "ads", "--disable", "--json")
    assert json.loads(out) == {"enabled": False}
    assert aifuncs.endpoints.get_ai_gateway("ads")["rate_limits"][0]["calls"] == 100


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--entity", "a=python:x"), "whole number from 0 to 100 (got 'x')"),
        (("--entity", "a"), "write --entity NAME=KIND:PERCENT"),
        (("--entity", "a=python:60", "--entity", "b=python:30"), "sum to 90 (a=60, b=30)"),
        (("--entity", "a=python:50", "--entity", "a=python:50"), "'a' is given twice"),
        (("--entity", "a=python:100", "--entity-option", "b.function=m:f"), "names the entity 'b'"),
        (("--entity", "a=python:100", "--entity-option", "function=m:f"), "write --entity-option NAME.KEY"),
        (("--entity-option", "a.function=m:f"), "needs the entity it configures"),
        (("--entity", "a=python:100", "--kind", "python"), "give one or the other"),
        (("--entity", "a=python:100", "--served-entities", "[]"), "not both"),
        (("--served-entities", "no-such-file.json"), "neither JSON nor a file"),
        (("--served-entities", "[{"), "is not JSON: Expecting property name"),
        (("--served-entities", '{"a": 1}'), "holds no list of served entities"),
        (("--entity", "a=nope:100"), "Unknown endpoint kind 'nope'"),
        ((), "Give 'ads' a --kind"),
    ],
)
def test_bad_entities_are_one_line_and_change_nothing(
    capsys: pytest.CaptureFixture[str], args: tuple[str, ...], message: str
) -> None:
    code, out, err = cli(capsys, "endpoints", "create", "ads", *args)
    assert code == 1 and message in err, err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert aifuncs.endpoints.list() == []


def test_bad_fallbacks_from_the_shell_are_one_line() -> None:
    assert (
        run(
            "endpoints", "create", "ads", "--kind", "python", "-o", "function=sample_models:doubled"
        ).returncode
        == 0
    )
    for args, message in [
        (("gateway", "fallback", "ads", "--enable", "--to", "nowhere"), "'nowhere' does not exist"),
        (("gateway", "fallback", "ads", "--to", "ads"), "goes with --enable"),
        (("gateway", "fallback", "ads", "--disable", "--to", "ads"), "not --disable"),
        (("endpoints", "update", "ads", "--entity", "a=python:50"), "sum to 50"),
    ]:
        result = run(*args)
        assert result.returncode == 1, result
        assert message in result.stderr and "Traceback" not in result.stderr, result.stderr
    assert "fallback_config" not in aifuncs.endpoints.get_ai_gateway("ads")
