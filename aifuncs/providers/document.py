"""`document` endpoints: `ai_parse_document`, offline. A PDF's text layer is read with pdfplumber (words,
their fonts and boxes, tables from their ruling lines); a page without one, and an image, are read by
Tesseract OCR (`tesseract-ocr` from Debian, through pytesseract).

The answer has Databricks' shape: `document.pages` and `document.elements` (each element a `text`, `title`,
`section_header`, `table`, `figure` or `caption`, with its content, its box and page), `error_status` (a
document that cannot be read says why here, and the query goes on), and `metadata`. Tables come as HTML
(`<table><tr><td>...`), as Databricks gives them. Boxes are `[x0, top, x1, bottom]` from the page's top left,
in PDF points (pixels for an image). Elements are in reading order: top to bottom, then left to right (one
column; a multi-column page reads across its columns).
"""

from __future__ import annotations

import asyncio
import hashlib
import html
import io
import statistics
from collections.abc import Iterable
from typing import Any

import pyarrow as pa
from pydantic import Field

from aifuncs.errors import MissingDependency
from aifuncs.providers.base import CallOptions, Provider, ProviderOptions

VERSION = "2.0"
RESULT_TYPE = (
    "STRUCT(document STRUCT(pages STRUCT(id INTEGER, image_uri VARCHAR)[], elements STRUCT(id INTEGER,"
    ' "type" VARCHAR, content VARCHAR, bbox STRUCT(coord DOUBLE[], page_id INTEGER)[], description VARCHAR)[]),'
    " error_status STRUCT(error_message VARCHAR, page_id INTEGER)[], metadata STRUCT(id VARCHAR, version VARCHAR))"
)
_TITLE_SIZE = 1.6  # a line this many times the page's body size is a title; 1.25 a section header


class DocumentOptions(ProviderOptions):
    ocr: str = Field(default="auto", pattern="^(auto|always|never)$", description="auto: pages without text")
    ocr_language: str = Field(default="eng", description="Tesseract's language codes, e.g. eng+deu.")
    dpi: int = Field(default=200, ge=72, le=600, description="Resolution a page is rendered at for OCR.")


class DocumentProvider(Provider):
    kind = "document"
    Options = DocumentOptions
    options: DocumentOptions
    default_batch_rows = 1  # a document per call: each is parsed, and fails, on its own
    blocking = True

    def output_type(self) -> str | None:
        return RESULT_TYPE

    def deterministic(self, options: CallOptions) -> bool:
        return False  # documents are big: their parses are not kept in the answer store

    async def predict(self, requests: pa.Array, options: CallOptions) -> Any:
        return await asyncio.to_thread(self.predict_blocking, requests, options)

    def predict_blocking(self, requests: pa.Array, options: CallOptions) -> Any:
        _check_installed()
        return [None if data is None else self.parse(data) for data in requests.to_pylist()]

    def parse(self, data: bytes | str) -> dict[str, Any]:
        content = data.encode() if isinstance(data, str) else bytes(data)
        metadata = {"id": hashlib.sha256(content).hexdigest()[:32], "version": VERSION}
        pages: list[dict[str, Any]] = []
        elements: list[dict[str, Any]] = []
        errors: list[dict[str, Any]] = []
        try:
            if content[:5] == b"%PDF-":
                self._pdf(content, pages, elements, errors)
            else:
                self._image(content, pages, elements)
        except _Unreadable as unreadable:
            return {"document": None, "error_status": [{"error_message": str(unreadable), "page_id": None}],
                    "metadata": metadata}  # fmt: skip
        for number, element in enumerate(elements):
            element["id"] = number
        return {
            "document": {"pages": pages, "elements": elements},
            "error_status": errors,
            "metadata": metadata,
        }

    def _pdf(
        self,
        content: bytes,
        pages: list[dict[str, Any]],
        elements: list[dict[str, Any]],
        errors: list[dict[str, Any]],
    ) -> None:
        import pdfplumber
        from pdfminer.pdfdocument import PDFEncryptionError, PDFPasswordIncorrect

        try:
            pdf = pdfplumber.open(io.BytesIO(content))
            opened = pdf.pages  # reading the page tree finds most damage
        except Exception as error:  # pdfminer raises many kinds for a damaged file; pdfplumber wraps them
            cause = error.args[0] if error.args and isinstance(error.args[0], Exception) else error
            if isinstance(cause, PDFPasswordIncorrect | PDFEncryptionError):
                raise _Unreadable(
                    "the PDF is encrypted: decrypt it first (its password is not known here)"
                ) from None
            raise _Unreadable(f"not a readable PDF ({type(cause).__name__}: {cause})") from None
        with pdf:
            for page_id, page in enumerate(opened):
                pages.append({"id": page_id, "image_uri": None})
                try:
                    words = page.extract_words(extra_attrs=["size"])
                    if words and self.options.ocr != "always":
                        elements.extend(_page_elements(page, words, page_id))
                    elif self.options.ocr != "never":
                        image = page.to_image(resolution=self.options.dpi).original
                        scale = 72.0 / self.options.dpi
                        elements.extend(_ocr_elements(image, page_id, scale, self.options.ocr_language))
                except _Unreadable as unreadable:
                    errors.append({"error_message": str(unreadable), "page_id": page_id})
                except Exception as error:  # one damaged page: the others are still read
                    errors.append({"error_message": f"{type(error).__name__}: {error}", "page_id": page_id})

    def _image(self, content: bytes, pages: list[dict[str, Any]], elements: list[dict[str, Any]]) -> None:
        from PIL import Image, UnidentifiedImageError

        try:
            image = Image.open(io.BytesIO(content))
            image.load()
        except (UnidentifiedImageError, OSError):
            raise _Unreadable("neither a PDF nor an image (PNG, JPEG, TIFF...) that can be read") from None
        if self.options.ocr == "never":
            raise _Unreadable("an image has no text layer, and this endpoint's ocr is 'never'")
        pages.append({"id": 0, "image_uri": None})
        elements.extend(_ocr_elements(image, 0, 1.0, self.options.ocr_language))


def _check_installed() -> None:
    try:
        import pdfplumber  # noqa: F401
        import pytesseract  # noqa: F401
    except ImportError as missing:
        raise MissingDependency(
            f"ai_parse_document needs {missing.name}: pip install 'aifuncs[local]' (pdfplumber, pytesseract)."
        ) from None


class _Unreadable(Exception):
    """The whole document cannot be read: said in its error_status, not raised to the query."""


def _page_elements(page: Any, words: list[dict[str, Any]], page_id: int) -> list[dict[str, Any]]:
    """A page's tables, figures and paragraphs, in reading order."""
    found: list[dict[str, Any]] = []
    tables = page.find_tables()
    for table in tables:
        rows = table.extract()
        found.append(_element("table", _html_table(rows), table.bbox, page_id))
    inside = [t.bbox for t in tables]
    loose = [w for w in words if not any(_within(w, box) for box in inside)]
    body = statistics.median([w["size"] for w in loose]) if loose else 0.0
    for block in _paragraphs(_lines(loose)):
        text = " ".join(" ".join(w["text"] for w in line) for line in block)
        size = max(w["size"] for line in block for w in line)
        kind = "text"
        if body and size >= _TITLE_SIZE * body:
            kind = "title"
        elif body and size >= 1.25 * body:
            kind = "section_header"
        elif text.lower().startswith(("figure ", "fig. ", "table ")) and len(block) <= 3:
            kind = "caption"
        found.append(_element(kind, text, _box(w for line in block for w in line), page_id))
    for image in page.images:
        box = (image["x0"], image["top"], image["x1"], image["bottom"])
        found.append(_element("figure", "", box, page_id))
    found.sort(key=lambda e: (round(e["bbox"][0]["coord"][1]), e["bbox"][0]["coord"][0]))
    for figure, after in zip(found, found[1:], strict=False):  # a figure's caption: what comes next, if one
        if figure["type"] == "figure" and after["type"] == "caption":
            figure["description"] = after["content"]
    return found


def _ocr_elements(image: Any, page_id: int, scale: float, language: str) -> list[dict[str, Any]]:
    """Tesseract's paragraphs of a page image, boxes scaled to the page's units."""
    import pytesseract

    try:
        data = pytesseract.image_to_data(image, lang=language, output_type=pytesseract.Output.DICT)
    except pytesseract.TesseractNotFoundError:
        raise _Unreadable(
            "this page is a scan, read by Tesseract OCR, which is not installed: apt-get install tesseract-ocr"
            " (Debian, Ubuntu) or brew install tesseract (macOS)"
        ) from None
    paragraphs: dict[tuple[int, int], list[dict[str, Any]]] = {}
    for i, text in enumerate(data["text"]):
        if not text.strip() or float(data["conf"][i]) < 0:
            continue
        left, top = data["left"][i] * scale, data["top"][i] * scale
        word = {"text": text, "x0": left, "top": top, "x1": left + data["width"][i] * scale,
                "bottom": top + data["height"][i] * scale, "line": data["line_num"][i]}  # fmt: skip
        paragraphs.setdefault((data["block_num"][i], data["par_num"][i]), []).append(word)
    found = []
    for words in paragraphs.values():
        lines: dict[int, list[str]] = {}
        for word in words:
            lines.setdefault(word["line"], []).append(word["text"])
        text = " ".join(" ".join(line) for line in lines.values())
        found.append(_element("text", text, _box(words), page_id))
    return found


def _lines(words: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """Words on one baseline (tops within a third of their height), left to right."""
    lines: list[list[dict[str, Any]]] = []
    for word in sorted(words, key=lambda w: (round(w["top"], 1), w["x0"])):
        if lines and abs(lines[-1][0]["top"] - word["top"]) <= (word["bottom"] - word["top"]) / 3:
            lines[-1].append(word)
        else:
            lines.append([word])
    return [sorted(line, key=lambda w: w["x0"]) for line in lines]


def _paragraphs(lines: list[list[dict[str, Any]]]) -> list[list[list[dict[str, Any]]]]:
    """Lines close enough (a gap under 0.6 of a line's height) and of one size are one paragraph."""
    blocks: list[list[list[dict[str, Any]]]] = []
    for line in lines:
        height = max(w["bottom"] - w["top"] for w in line)
        size = max(w["size"] for w in line)
        if blocks:
            last = blocks[-1][-1]
            gap = line[0]["top"] - max(w["bottom"] for w in last)
            if gap < 0.6 * height and abs(max(w["size"] for w in last) - size) < 0.5:
                blocks[-1].append(line)
                continue
        blocks.append([line])
    return blocks


def _element(kind: str, content: str, box: Iterable[float], page_id: int) -> dict[str, Any]:
    return {"id": 0, "type": kind, "content": content,
            "bbox": [{"coord": [round(float(c), 2) for c in box], "page_id": page_id}], "description": None}  # fmt: skip


def _box(words: Iterable[dict[str, Any]]) -> tuple[float, float, float, float]:
    chosen = list(words)
    return (min(w["x0"] for w in chosen), min(w["top"] for w in chosen),
            max(w["x1"] for w in chosen), max(w["bottom"] for w in chosen))  # fmt: skip


def _within(word: dict[str, Any], box: tuple[float, float, float, float]) -> bool:
    x0, top, x1, bottom = box
    middle_x, middle_y = (word["x0"] + word["x1"]) / 2, (word["top"] + word["bottom"]) / 2
    return x0 <= middle_x <= x1 and top <= middle_y <= bottom


def _html_table(rows: list[list[str | None]]) -> str:
    cells = "".join(
        "<tr>" + "".join(f"<td>{html.escape(cell or '')}</td>" for cell in row) + "</tr>" for row in rows
    )
    return f"<table>{cells}</table>"
