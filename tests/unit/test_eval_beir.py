"""BEIR loading: the shipped mini dataset, and an error naming the file and line for each kind of bad data."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from rerankd.evaluation.beir import DatasetError, load_beir

MINI = Path(__file__).resolve().parents[1] / "data" / "beir-mini"


def test_loads_the_mini_dataset() -> None:
    ds = load_beir(MINI)
    assert ds.name == "beir-mini" and ds.split == "test"
    assert len(ds.corpus_ids) == 40 and ds.corpus_ids[0] == "d01"
    assert ds.corpus_texts[0].startswith("Vitamin D and bone health Vitamin D helps")  # title + text
    assert ds.corpus_texts[ds.corpus_ids.index("d39")].startswith("Hybrid cars")  # empty title: no leading space
    # Only judged queries, in qrels order; the header row is not a judgment; q11 has no qrels.
    assert list(ds.queries) == [f"q{i}" for i in range(1, 11)]
    assert ds.qrels["q1"] == {"d01": 2, "d03": 2, "d02": 1}
    assert ds.qrels["q2"]["d06"] == 0
    assert ds.unknown_corpus_ids == {"d99"}


def test_other_split_and_limit() -> None:
    ds = load_beir(MINI, "dev")
    assert list(ds.queries) == ["q2", "q4"]
    limited = load_beir(MINI).limit(3)
    assert list(limited.queries) == ["q1", "q2", "q3"] and list(limited.qrels) == ["q1", "q2", "q3"]
    assert len(limited.corpus_ids) == 40
    assert load_beir(MINI).limit(None).queries.keys() == load_beir(MINI).queries.keys()


def test_missing_split_lists_the_splits_present() -> None:
    with pytest.raises(DatasetError, match=r"qrels/train\.tsv: file not found \(splits present: dev, test"):
        load_beir(MINI, "train")


@pytest.fixture
def copy(tmp_path: Path) -> Path:
    target = tmp_path / "ds"
    shutil.copytree(MINI, target)
    return target


def _append(path: Path, text: str) -> None:
    with path.open("a", encoding="utf-8") as f:
        f.write(text)


@pytest.mark.parametrize(
    ("file", "extra", "message"),
    [
        ("corpus.jsonl", "{not json}\n", r"corpus\.jsonl:41: not valid JSON"),
        ("corpus.jsonl", '["a list"]\n', r"corpus\.jsonl:41: expected a JSON object, got list"),
        ("corpus.jsonl", '{"text": "no id"}\n', r"corpus\.jsonl:41: missing or empty \"_id\""),
        ("corpus.jsonl", '{"_id": "d01", "text": "again"}\n', r"corpus\.jsonl:41: duplicate \"_id\" 'd01'"),
        ("corpus.jsonl", '{"_id": "d41", "text": 5}\n', r"corpus\.jsonl:41: \"text\" must be a string, got int"),
        ("corpus.jsonl", '{"_id": "d41", "title": "", "text": " "}\n', r"corpus\.jsonl:41: document 'd41' has neither"),
        ("queries.jsonl", '{"_id": "q12"}\n', r"queries\.jsonl:12: query 'q12' has no \"text\""),
        ("qrels/test.tsv", "q1\td05\n", r"test\.tsv:30: expected 3 tab-separated columns .* got 2"),
        ("qrels/test.tsv", "q1\td05\thigh\n", r"test\.tsv:30: score 'high' is not an integer"),
        ("qrels/test.tsv", "q1\td01\t1\n", r"test\.tsv:30: \('q1', 'd01'\) judged twice"),
        ("qrels/test.tsv", "q404\td01\t1\n", r"test\.tsv: 1 query id\(s\) not in .*queries\.jsonl, e\.g\. 'q404'"),
    ],
)
def test_bad_data_names_file_and_line(copy: Path, file: str, extra: str, message: str) -> None:
    _append(copy / file, extra)
    with pytest.raises(DatasetError, match=message):
        load_beir(copy)


def test_missing_files_and_empty_data(copy: Path, tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="not a directory"):
        load_beir(tmp_path / "nowhere")
    (copy / "queries.jsonl").unlink()
    with pytest.raises(DatasetError, match=r"queries\.jsonl: file not found"):
        load_beir(copy)
    (copy / "corpus.jsonl").write_text("\n\n")
    with pytest.raises(DatasetError, match=r"corpus\.jsonl: no documents"):
        load_beir(copy)


def test_integer_ids_and_blank_lines_are_accepted(tmp_path: Path) -> None:
    (tmp_path / "qrels").mkdir()
    (tmp_path / "corpus.jsonl").write_text('{"_id": 1, "text": "one"}\n\n{"_id": 2, "title": "two"}\n')
    (tmp_path / "queries.jsonl").write_text('{"_id": 7, "text": "seven"}\n')
    (tmp_path / "qrels" / "test.tsv").write_text("7\t2\t1\n")  # no header row
    ds = load_beir(tmp_path)
    assert ds.corpus_ids == ["1", "2"] and ds.corpus_texts == ["one", "two"]
    assert ds.qrels == {"7": {"2": 1}} and ds.queries == {"7": "seven"}
