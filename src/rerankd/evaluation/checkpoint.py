"""Resumable evaluation: each reranked query is appended to a JSONL file as soon as it is scored.

Why: a large evaluation (thousands of queries × 100 documents) takes hours on CPU; a crash, a Ctrl-C or
a preempted GPU must not throw the finished work away. A rerun with the same settings reads the file
and sends only the queries it lacks.

A line is ``{"run": KEY, "query_id": ..., "doc_ids": [...], "scores": [...]}``. ``KEY`` is a hash of
everything that decides the scores (dataset path, split, top-k, language, model, instruction), so one
file can hold the runs of an instruction sweep side by side, and a line is reused only when it was
scored for the very same candidate list. A torn last line (the process died mid-write) is ignored.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO

__all__ = ["Checkpoint", "run_key"]


def run_key(**settings: Any) -> str:
    """A short stable hash of the settings that decide a run's scores."""
    blob = json.dumps(settings, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


class Checkpoint:
    """The JSONL file of finished queries; ``done(run)`` reads it back, ``record`` appends."""

    def __init__(self, path: Path | str, *, resume: bool = True):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.skipped_lines = 0
        self._lines: list[dict[str, Any]] = []
        if resume:
            self._lines = self._read()
        else:
            self.path.unlink(missing_ok=True)
        self._file: TextIO | None = None

    def _read(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        lines = []
        with self.path.open(encoding="utf-8") as f:
            for line in f:
                try:
                    row = json.loads(line)
                    if not (isinstance(row, dict) and isinstance(row.get("run"), str)
                            and isinstance(row.get("query_id"), str) and len(row["doc_ids"]) == len(row["scores"])):
                        raise ValueError
                except (ValueError, KeyError, TypeError):
                    self.skipped_lines += 1
                    continue
                lines.append(row)
        return lines

    def done(self, run: str, candidates: Mapping[str, Sequence[str]]) -> dict[str, dict[str, float]]:
        """Scores already on file for ``run``: query id → {doc id → score}, only where the candidate list
        on file is exactly ``candidates[query_id]`` (same documents, same order)."""
        finished: dict[str, dict[str, float]] = {}
        for row in self._lines:
            query_id = row["query_id"]
            if row["run"] == run and query_id in candidates and list(candidates[query_id]) == row["doc_ids"]:
                finished[query_id] = dict(zip(row["doc_ids"], map(float, row["scores"]), strict=True))
        return finished

    def record(self, run: str, query_id: str, doc_ids: Sequence[str], scores: Sequence[float]) -> None:
        """Append one finished query and flush, so it survives the process dying right after."""
        if self._file is None:
            torn = _ends_without_newline(self.path)
            self._file = self.path.open("a", encoding="utf-8")
            if torn:  # end the torn line so the next record starts on a line of its own
                self._file.write("\n")
        row = {"run": run, "query_id": query_id, "doc_ids": list(doc_ids), "scores": list(scores)}
        self._file.write(json.dumps(row, ensure_ascii=False) + "\n")
        self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> Checkpoint:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _ends_without_newline(path: Path) -> bool:
    if not path.exists() or path.stat().st_size == 0:
        return False
    with path.open("rb") as f:
        f.seek(-1, 2)
        return f.read(1) != b"\n"
