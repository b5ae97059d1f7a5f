"""Load a BEIR-format dataset: ``corpus.jsonl``, ``queries.jsonl`` and ``qrels/<split>.tsv``.

Why a loader of our own: BEIR's format is three small files, and users bring their own data in it.
What they need most from a loader is an error that names the file and the line to fix, not a
``KeyError`` from deep inside a library.

Conventions kept from BEIR (and MTEB, which vLLM's NFCorpus check runs on):
- a document's text is ``title + " " + text`` (stripped), so titles count for BM25 and the reranker;
- the queries evaluated are those that appear in the split's qrels, in the order they first appear;
- qrels rows are ``query-id<TAB>corpus-id<TAB>score`` with an optional header row.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["BeirDataset", "DatasetError", "load_beir"]


class DatasetError(ValueError):
    """Bad or missing dataset data; the message names the file (and line) to fix."""


@dataclass(frozen=True)
class BeirDataset:
    """One split of a BEIR dataset, ready for retrieval and evaluation."""

    path: Path
    split: str
    corpus_ids: list[str]
    corpus_texts: list[str]
    queries: dict[str, str]
    """Query id → text, only the queries judged in this split, in qrels order."""
    qrels: dict[str, dict[str, int]]
    """Query id → {corpus id → graded relevance}."""
    unknown_corpus_ids: set[str] = field(default_factory=set)
    """Corpus ids judged in the qrels but absent from corpus.jsonl (they can never be retrieved)."""

    @property
    def name(self) -> str:
        return self.path.name

    def limit(self, max_queries: int | None) -> BeirDataset:
        """The same dataset with only its first ``max_queries`` queries (a quick look at a big set)."""
        if max_queries is None or max_queries >= len(self.queries):
            return self
        keep = list(self.queries)[:max_queries]
        return BeirDataset(self.path, self.split, self.corpus_ids, self.corpus_texts,
                           {q: self.queries[q] for q in keep}, {q: self.qrels[q] for q in keep},
                           self.unknown_corpus_ids)


def load_beir(path: Path | str, split: str = "test") -> BeirDataset:
    """Read and check one split of the BEIR dataset in ``path``; raise ``DatasetError`` on bad data."""
    root = Path(path)
    if not root.is_dir():
        raise DatasetError(f"{root}: not a directory; --dataset takes a BEIR folder with corpus.jsonl, "
                           "queries.jsonl and qrels/<split>.tsv")
    corpus = _read_jsonl(root / "corpus.jsonl", required_text=False)
    if not corpus:
        raise DatasetError(f"{root / 'corpus.jsonl'}: no documents")
    queries = _read_jsonl(root / "queries.jsonl", required_text=True)
    qrels_path = root / "qrels" / f"{split}.tsv"
    if not qrels_path.is_file():
        available = sorted(p.stem for p in (root / "qrels").glob("*.tsv")) if (root / "qrels").is_dir() else []
        hint = f" (splits present: {', '.join(available)}; pick one with --split)" if available else ""
        raise DatasetError(f"{qrels_path}: file not found{hint}")
    qrels = _read_qrels(qrels_path)
    if not qrels:
        raise DatasetError(f"{qrels_path}: no judgments")
    missing = [q for q in qrels if q not in queries]
    if missing:
        raise DatasetError(f"{qrels_path}: {len(missing)} query id(s) not in {root / 'queries.jsonl'}, "
                           f"e.g. {missing[0]!r}")
    unknown = {d for judged in qrels.values() for d in judged if d not in corpus}
    return BeirDataset(
        path=root, split=split,
        corpus_ids=list(corpus), corpus_texts=[_doc_text(v) for v in corpus.values()],
        queries={q: queries[q]["text"] for q in qrels}, qrels=qrels, unknown_corpus_ids=unknown,
    )


def _doc_text(record: dict[str, Any]) -> str:
    return f"{record.get('title') or ''} {record.get('text') or ''}".strip()


def _read_jsonl(path: Path, *, required_text: bool) -> dict[str, dict[str, Any]]:
    """Rows by ``_id``. Documents need a ``text`` or a ``title``; queries need a non-empty ``text``."""
    if not path.is_file():
        raise DatasetError(f"{path}: file not found")
    rows: dict[str, dict[str, Any]] = {}
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DatasetError(f"{where}: not valid JSON ({exc.msg} at column {exc.colno})") from None
            if not isinstance(row, dict):
                raise DatasetError(f"{where}: expected a JSON object, got {type(row).__name__}")
            row_id = row.get("_id")
            if not isinstance(row_id, (str, int)) or isinstance(row_id, bool) or str(row_id) == "":
                raise DatasetError(f"{where}: missing or empty \"_id\" (a string)")
            row_id = str(row_id)
            for key in ("text", "title"):
                if row.get(key) is not None and not isinstance(row[key], str):
                    raise DatasetError(f"{where}: \"{key}\" must be a string, got {type(row[key]).__name__}")
            if required_text and not (row.get("text") or "").strip():
                raise DatasetError(f"{where}: query {row_id!r} has no \"text\"")
            if not required_text and not _doc_text(row):
                raise DatasetError(f"{where}: document {row_id!r} has neither \"text\" nor \"title\"")
            if row_id in rows:
                raise DatasetError(f"{where}: duplicate \"_id\" {row_id!r}")
            rows[row_id] = row
    return rows


def _read_qrels(path: Path) -> dict[str, dict[str, int]]:
    qrels: dict[str, dict[str, int]] = {}
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            cols = line.split("\t")
            where = f"{path}:{lineno}"
            if len(cols) != 3:
                raise DatasetError(f"{where}: expected 3 tab-separated columns "
                                   f"(query-id, corpus-id, score), got {len(cols)}")
            query_id, corpus_id, score = (c.strip() for c in cols)
            try:
                relevance = int(score)
            except ValueError:
                if lineno == 1 and not qrels:
                    continue  # the header row, e.g. "query-id\tcorpus-id\tscore"
                raise DatasetError(f"{where}: score {score!r} is not an integer") from None
            if not query_id or not corpus_id:
                raise DatasetError(f"{where}: empty query-id or corpus-id")
            judged = qrels.setdefault(query_id, {})
            if corpus_id in judged and judged[corpus_id] != relevance:
                raise DatasetError(f"{where}: ({query_id!r}, {corpus_id!r}) judged twice with different scores")
            judged[corpus_id] = relevance
    return qrels
