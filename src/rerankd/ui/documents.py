"""Turning what a person pastes or uploads into the list of documents sent to the rerank API.

Why a module of its own: the rules (one document per line; which JSONL key or CSV column holds the
text; what counts as empty) are the part of the page most likely to surprise someone, so they live in
plain functions with their own unit tests and error messages that name the file and line to fix.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

__all__ = [
    "SUPPORTED_SUFFIXES",
    "TEXT_KEYS",
    "DocumentParseError",
    "collect_documents",
    "parse_csv",
    "parse_document_file",
    "parse_jsonl",
    "parse_lines",
]

SUPPORTED_SUFFIXES = (".txt", ".jsonl", ".csv")
# The field that holds a document's text in JSONL objects and CSV headers, in order of preference
# (``text`` is the rerank API's own name; the others are common in BEIR/MS MARCO style exports).
TEXT_KEYS = ("text", "document", "passage", "content", "contents", "body")


class DocumentParseError(ValueError):
    """An uploaded file or pasted text that cannot become documents; the message names where and why."""


def parse_lines(text: str) -> list[str]:
    """One document per non-blank line, stripped (blank lines separate nothing and are dropped)."""
    return [line.strip() for line in text.splitlines() if line.strip()]


def parse_jsonl(text: str, *, source: str = "JSONL") -> list[str]:
    """One JSON value per line: a string, or an object with a text field (see ``TEXT_KEYS``)."""
    documents: list[str] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DocumentParseError(f"{source} line {number} is not valid JSON: {exc.msg}") from None
        if isinstance(value, dict):
            key = next((k for k in TEXT_KEYS if isinstance(value.get(k), str)), None)
            if key is None:
                raise DocumentParseError(
                    f"{source} line {number}: an object needs a string field named one of {', '.join(TEXT_KEYS)}"
                )
            value = value[key]
        if not isinstance(value, str):
            raise DocumentParseError(f"{source} line {number}: expected a string or an object with a `text` field")
        if value.strip():
            documents.append(value.strip())
    return documents


def parse_csv(text: str, *, source: str = "CSV") -> list[str]:
    """Rows of a CSV file: the column headed by a ``TEXT_KEYS`` name, else the first column of every row.

    Without a recognised header every row, the first included, is a document: guessing that an
    arbitrary first row is a header would silently drop a document.
    """
    rows = [(number, row) for number, row in enumerate(csv.reader(io.StringIO(text)), start=1)
            if any(cell.strip() for cell in row)]
    if not rows:
        return []
    header = [cell.strip().lower() for cell in rows[0][1]]
    column = next((header.index(k) for k in TEXT_KEYS if k in header), None)
    if column is not None:
        rows = rows[1:]
    column = column or 0
    documents: list[str] = []
    for number, row in rows:
        if column >= len(row):
            raise DocumentParseError(f"{source} row {number} has no column {column + 1}")
        if row[column].strip():
            documents.append(row[column].strip())
    return documents


def parse_document_file(path: str | Path) -> list[str]:
    """Documents from an uploaded ``.txt`` (one per line), ``.jsonl`` or ``.csv`` file (UTF-8)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in SUPPORTED_SUFFIXES:
        raise DocumentParseError(
            f"{path.name}: unsupported file type {suffix or '(none)'}; upload one of {', '.join(SUPPORTED_SUFFIXES)}"
        )
    try:
        # utf-8-sig: spreadsheet exports often start with a byte-order mark that would glue onto the header.
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise DocumentParseError(f"{path.name} is not UTF-8 text") from None
    if suffix == ".jsonl":
        return parse_jsonl(text, source=path.name)
    if suffix == ".csv":
        return parse_csv(text, source=path.name)
    return parse_lines(text)


def collect_documents(pasted: str | None, file_path: str | Path | None) -> list[str]:
    """The documents to rank: the pasted lines first, then the uploaded file's, in that order.

    The result's positions are the "original index" the ranked table shows.
    """
    documents = parse_lines(pasted or "")
    if file_path:
        documents.extend(parse_document_file(file_path))
    return documents
