"""Pasted text and uploaded .txt/.jsonl/.csv files become the documents the UI sends, in order."""

from __future__ import annotations

from pathlib import Path

import pytest

from rerankd.ui.documents import (
    DocumentParseError,
    collect_documents,
    parse_csv,
    parse_document_file,
    parse_jsonl,
    parse_lines,
)


def test_lines_are_stripped_and_blank_lines_dropped() -> None:
    assert parse_lines("  first \n\n\t\nsecond\r\nthird  ") == ["first", "second", "third"]
    assert parse_lines("") == []


def test_jsonl_takes_strings_and_the_text_field_in_preference_order() -> None:
    text = '"plain"\n{"text": "from text", "title": "ignored"}\n\n{"passage": "from passage"}\n{"contents": " c "}\n'
    assert parse_jsonl(text) == ["plain", "from text", "from passage", "c"]


def test_jsonl_errors_name_the_line() -> None:
    with pytest.raises(DocumentParseError, match=r"docs\.jsonl line 2 is not valid JSON"):
        parse_jsonl('"ok"\n{broken\n', source="docs.jsonl")
    with pytest.raises(DocumentParseError, match="line 1: an object needs a string field"):
        parse_jsonl('{"title": "no text"}')
    with pytest.raises(DocumentParseError, match="line 1: expected a string"):
        parse_jsonl("42")


def test_csv_uses_the_text_column_when_the_header_names_one() -> None:
    text = 'id,Text,score\n1,"first, with a comma",0.1\n2,"second\nspans lines",0.2\n3,,0.3\n'
    assert parse_csv(text) == ["first, with a comma", "second\nspans lines"]


def test_csv_without_a_known_header_keeps_every_row_of_the_first_column() -> None:
    assert parse_csv("alpha,1\nbeta,2\n\ngamma,3\n") == ["alpha", "beta", "gamma"]
    assert parse_csv("") == []


def test_csv_row_missing_the_text_column_is_reported() -> None:
    with pytest.raises(DocumentParseError, match="row 3 has no column 2"):
        parse_csv("id,text\n1,one\n2\n", source="x.csv")


def test_files_are_parsed_by_suffix_and_a_bom_is_ignored(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("one\n\ntwo\n", encoding="utf-8")
    (tmp_path / "b.JSONL").write_text('{"text": "three"}\n', encoding="utf-8")
    (tmp_path / "c.csv").write_text("text\nfour\n", encoding="utf-8-sig")  # spreadsheet export with a BOM
    assert parse_document_file(tmp_path / "a.txt") == ["one", "two"]
    assert parse_document_file(tmp_path / "b.JSONL") == ["three"]
    assert parse_document_file(tmp_path / "c.csv") == ["four"]


def test_unsupported_or_non_utf8_files_are_refused(tmp_path: Path) -> None:
    (tmp_path / "doc.pdf").write_bytes(b"%PDF-1.7")
    with pytest.raises(DocumentParseError, match=r"doc\.pdf: unsupported file type \.pdf"):
        parse_document_file(tmp_path / "doc.pdf")
    (tmp_path / "latin1.txt").write_bytes("café\n".encode("latin-1"))
    with pytest.raises(DocumentParseError, match=r"latin1\.txt is not UTF-8"):
        parse_document_file(tmp_path / "latin1.txt")


def test_pasted_documents_come_before_the_file_ones(tmp_path: Path) -> None:
    upload = tmp_path / "more.txt"
    upload.write_text("from file\n", encoding="utf-8")
    assert collect_documents("pasted 1\npasted 2", upload) == ["pasted 1", "pasted 2", "from file"]
    assert collect_documents(None, None) == []
    assert collect_documents("only pasted", None) == ["only pasted"]
