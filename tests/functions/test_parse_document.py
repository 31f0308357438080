"""ai_parse_document on documents the tests make themselves: a two-page PDF with a title, paragraphs and a
table; a scan (an image of text, alone and inside a PDF without a text layer); a corrupt and an encrypted
file, which fail on their own row."""

from __future__ import annotations

import io
import re
from pathlib import Path

import duckdb
import pytest

import aifuncs


def contract_pdf(encrypt: str | None = None) -> bytes:
    from reportlab.lib import colors
    from reportlab.lib.pagesizes import A4
    from reportlab.lib.styles import getSampleStyleSheet
    from reportlab.platypus import PageBreak, Paragraph, SimpleDocTemplate, Spacer, Table, TableStyle

    styles = getSampleStyleSheet()
    table = Table([["Item", "Qty", "Price"], ["Widget", "2", "3.50"], ["Gadget", "1", "10.00"]])
    table.setStyle(TableStyle([("GRID", (0, 0), (-1, -1), 0.5, colors.black)]))
    buffer = io.BytesIO()
    SimpleDocTemplate(buffer, pagesize=A4, encrypt=encrypt).build(
        [
            Paragraph("Service Agreement", styles["Title"]),
            Paragraph("This agreement is made between Acme and Globex.", styles["Normal"]),
            Spacer(1, 12),
            table,
            Spacer(1, 12),
            Paragraph("Payment is due in thirty days.", styles["Normal"]),
            PageBreak(),
            Paragraph("Termination", styles["Heading2"]),
            Paragraph("Either party may end this agreement with notice.", styles["Normal"]),
        ]
    )
    return buffer.getvalue()


def scan_png() -> bytes:
    from PIL import Image, ImageDraw, ImageFont

    image = Image.new("L", (1400, 420), 255)
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=44)
    draw.text((60, 60), "Scanned invoice 2026", font=font, fill=0)
    draw.text((60, 220), "Total due: 42 dollars", font=font, fill=0)
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def scanned_pdf() -> bytes:
    """A PDF page that is only an image: no text layer, so it is read by OCR."""
    from reportlab.lib.utils import ImageReader
    from reportlab.pdfgen import canvas

    buffer = io.BytesIO()
    page = canvas.Canvas(buffer, pagesize=(700, 210))
    page.drawImage(ImageReader(io.BytesIO(scan_png())), 0, 0, width=700, height=210)
    page.save()
    return buffer.getvalue()


@pytest.fixture
def files(tmp_path: Path) -> Path:
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "a_contract.pdf").write_bytes(contract_pdf())
    (folder / "b_scan.png").write_bytes(scan_png())
    (folder / "c_scanned.pdf").write_bytes(scanned_pdf())
    (folder / "d_corrupt.pdf").write_bytes(contract_pdf()[:400])
    (folder / "e_locked.pdf").write_bytes(contract_pdf(encrypt="s3cret"))
    return folder


def words(text: str | None) -> str:
    return re.sub(r"\s+", " ", text or "").strip()


def test_documents_come_back_in_databricks_shape_with_text_in_reading_order(
    con: duckdb.DuckDBPyConnection, files: Path
) -> None:
    rows = aifuncs.sql(
        con,
        f"SELECT parse_path(filename)[-1] AS name, ai_parse_document(content) AS parsed"
        f" FROM read_blob('{files}/*') ORDER BY name",
    ).fetchall()
    parsed = dict(rows)
    contract = parsed["a_contract.pdf"]
    assert contract["error_status"] == [] and contract["metadata"]["version"] == "2.0"
    assert [p["id"] for p in contract["document"]["pages"]] == [0, 1]
    elements = contract["document"]["elements"]
    assert [(e["type"], words(e["content"])) for e in elements if e["type"] != "table"] == [
        ("title", "Service Agreement"),
        ("text", "This agreement is made between Acme and Globex."),
        ("text", "Payment is due in thirty days."),
        ("section_header", "Termination"),
        ("text", "Either party may end this agreement with notice."),
    ]
    (table,) = [e for e in elements if e["type"] == "table"]
    cells = [re.findall(r"<td>(.*?)</td>", row) for row in re.findall(r"<tr>(.*?)</tr>", table["content"])]
    assert cells == [["Item", "Qty", "Price"], ["Widget", "2", "3.50"], ["Gadget", "1", "10.00"]]
    assert [e["type"] for e in elements].index("table") == 2  # between the paragraphs it sits between
    assert all(e["bbox"][0]["page_id"] == (1 if i >= 4 else 0) for i, e in enumerate(elements))
    x0, top, x1, bottom = table["bbox"][0]["coord"]
    assert 0 < x0 < x1 < 595.3 and 0 < top < bottom < 841.9  # A4 in points, from the top left
    for name in ("b_scan.png", "c_scanned.pdf"):  # read by Tesseract
        text = " ".join(words(e["content"]) for e in parsed[name]["document"]["elements"])
        assert "Scanned invoice 2026" in text and "Total due: 42 dollars" in text, (name, text)
        assert parsed[name]["error_status"] == []


def test_a_corrupt_or_encrypted_file_fails_on_its_own_row(
    con: duckdb.DuckDBPyConnection, files: Path
) -> None:
    rows = dict(
        aifuncs.sql(
            con,
            f"SELECT parse_path(filename)[-1], ai_parse_document(content) FROM read_blob('{files}/*')",
        ).fetchall()
    )
    assert rows["a_contract.pdf"]["document"] is not None  # the others were read
    for name, message in (("d_corrupt.pdf", "not a readable PDF"), ("e_locked.pdf", "the PDF is encrypted")):
        assert rows[name]["document"] is None
        (status,) = rows[name]["error_status"]
        assert message in status["error_message"], status
    usage = con.sql(
        "SELECT count(*), min(endpoint) FROM aifuncs_usage WHERE function = 'ai_parse_document'"
    ).fetchall()
    assert usage == [(5, "parser")]  # one request per document, to the built-in parser


def test_the_pandas_accessor_parses_a_series_of_files(files: Path) -> None:
    import pandas as pd

    contents = pd.Series([(files / "a_contract.pdf").read_bytes(), b"not a document", None], name="content")
    parsed = contents.ai.parse_document()
    assert parsed.index.equals(contents.index)
    assert parsed[0]["document"]["elements"][0]["content"] == "Service Agreement"
    assert (
        parsed[1]["document"] is None
        and "neither a PDF nor an image" in parsed[1]["error_status"][0]["error_message"]
    )
    assert parsed[2] is None or pd.isna(parsed[2])  # no file, no parse
