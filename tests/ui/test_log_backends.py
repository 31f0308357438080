"""The request log page (`/ui/endpoints/{name}?tab=logs`) and its search, detail and CSV read the inference table
through the payload store, on SQLite files and on PostgreSQL alike: keyset pages newest first, filters, the same
visibility rule (an admin or a manager every row; anyone else with CAN_VIEW only its own rows written since it was
made), and on PostgreSQL the rows every host wrote. A sealed payload never matches a search (its bytes are no
text), while its request id still does."""

from __future__ import annotations

import re
import uuid
from pathlib import Path

import pytest

import aifuncs
from aifuncs.governance.keys import generate_key
from aifuncs.governance.payloads import InferenceTable, PayloadRow, day, now_ms, payload_log

from .conftest import Ui

TABLE = InferenceTable(enabled=True)


def _row(stamp: int, requester: str, text: str, status: int = 200, endpoint: str = "llm") -> PayloadRow:
    return PayloadRow(
        uuid.uuid4().hex, None, day(stamp), stamp, status, 12.5,
        f'{{"messages": [{{"role": "user", "content": "{text}"}}]}}', '{"choices": []}',
        endpoint, None, requester, endpoint, "rest", 3, 4,
    )  # fmt: skip


def _record(path: Path, rows: list[PayloadRow]) -> None:
    for row in rows:
        payload_log().record(path, row, TABLE)
    payload_log().flush()


def _ids(page: str) -> list[str]:
    return re.findall(r'<tr id="r-\d+"><td><a href="/ui/endpoints/llm/logs/([0-9a-f]+)"', page)


def _listed(client: object, query: str = "") -> list[str]:
    answer = client.get("/ui/endpoints/llm?tab=logs" + query)  # type: ignore[attr-defined]
    assert answer.status_code == 200, answer.text
    return _ids(answer.text)


def test_log_pages_filters_and_visibility_on_both_backends(
    backend: str, ui: Ui, home: Path, tmp_path: Path
) -> None:
    start = now_ms() + 1_000  # after every principal and the endpoint were made
    rows = [
        _row(start + i, "alice" if i % 3 else "carol", f"ticket-{i}", status=500 if i % 10 == 0 else 200)
        for i in range(120)
    ]
    rows.append(_row(start + 500, "alice", "elsewhere", endpoint="other"))  # another endpoint's row
    _record(home / "payloads.db", rows)
    other_host = tmp_path / "host-b" / "payloads.db"  # a second host's home, on the same database if one
    remote = _row(start + 200, "alice", "from-host-b")
    _record(other_host, [remote])
    on_database = backend == "postgresql"
    llm = sorted((r for r in rows if r.endpoint == "llm"), key=lambda r: -r.timestamp_ms)
    if on_database:
        llm.insert(0, remote)  # newest: every host's rows are one table
    assert not on_database or not (home / "payloads.db").exists()

    # an admin pages through every row, newest first, 50 a page
    admin = ui.client("admin")
    seen: list[str] = []
    path = "/ui/endpoints/llm?tab=logs"
    while True:
        answer = admin.get(path)
        seen += _ids(answer.text)
        older = re.search(r'<a href="\?([^"]+)">Older', answer.text)
        if older is None:
            break
        path = "/ui/endpoints/llm?" + older.group(1).replace("&amp;", "&")
    assert len(seen) == len(llm) > 100 and seen == [r.request_id for r in llm]

    # filters: status class, requester, text, request id
    assert _listed(admin, "&status=5xx") == [r.request_id for r in llm if r.status_code >= 500]
    assert _listed(admin, "&requester=carol") == [r.request_id for r in llm if r.requester == "carol"][:50]
    assert _listed(admin, "&q=ticket-77%22") == [r.request_id for r in llm if '"ticket-77"' in str(r.request)]
    assert _listed(admin, f"&q={rows[5].request_id}") == [rows[5].request_id]
    assert _listed(admin, "&q=from-host-b") == ([remote.request_id] if on_database else [])

    # alice (CAN_QUERY) reads her own rows only; bob (CAN_VIEW) none of hers; mallory not the endpoint
    alice = ui.client("alice")
    assert _listed(alice) == [r.request_id for r in llm if r.requester == "alice"][:50]
    assert _listed(alice, "&requester=carol") == []
    assert _listed(alice, "&q=ticket-3%22") == []  # carol's text, not hers
    assert _listed(ui.client("bob")) == []
    assert ui.client("mallory").get("/ui/endpoints/llm?tab=logs").status_code == 404
    carols = next(r for r in rows if r.requester == "carol")
    assert "ticket-0" not in alice.get(f"/ui/endpoints/llm/logs/{carols.request_id}").text
    detail = admin.get(f"/ui/endpoints/llm/logs/{carols.request_id}", headers={"hx-request": "true"})
    assert detail.status_code == 200 and '"ticket-0"' in detail.text.replace("&#34;", '"')
    csv_lines = alice.get("/ui/endpoints/llm/logs.csv").text.splitlines()
    assert len(csv_lines) == 1 + sum(r.requester == "alice" for r in llm)
    assert all(",carol," not in line for line in csv_lines)


def test_a_sealed_payload_never_matches_a_search(
    backend: str, ui: Ui, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AIFUNCS_ENCRYPTION_KEY", generate_key())
    monkeypatch.delenv("AIFUNCS_ENCRYPTION_KEY_FILE", raising=False)
    start = now_ms() + 1_000
    rows = [_row(start + i, "alice", "x" * 300) for i in range(40)]  # 40 sealed payloads of ~340 bytes each
    _record(home / "payloads.db", rows)
    admin = ui.client("admin")
    assert len(_listed(admin)) == 40
    assert "payloads are encrypted at rest" in admin.get("/ui/endpoints/llm?tab=logs").text
    # one byte of text: it would be in ~30 of 40 rows' random bytes were sealed bytes searched as text
    for needle in ("e", "x", "%22"):
        assert _listed(admin, f"&q={needle}") == []
    assert _listed(admin, f"&q={rows[7].request_id}") == [rows[7].request_id]
    opened = admin.get(f"/ui/endpoints/llm/logs/{rows[7].request_id}", headers={"hx-request": "true"})
    assert "x" * 300 in opened.text  # opened with the key for the reader who may see it
    assert aifuncs.endpoints.get("llm").name == "llm"
