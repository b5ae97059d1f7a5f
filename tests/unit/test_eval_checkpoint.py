"""The resumable checkpoint: what a rerun may reuse, and what it must not."""

from __future__ import annotations

import json
from pathlib import Path

from rerankd.evaluation.checkpoint import Checkpoint, run_key

CANDIDATES = {"q1": ["a", "b"], "q2": ["c"], "q3": ["d", "e"]}


def test_records_survive_a_new_process_and_are_kept_apart_by_run(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "ck.jsonl"
    key_a, key_b = run_key(instruction=None, top_k=10), run_key(instruction="other", top_k=10)
    assert key_a != key_b and key_a == run_key(top_k=10, instruction=None)
    with Checkpoint(path) as ck:
        ck.record(key_a, "q1", ["a", "b"], [0.9, 0.1])
        ck.record(key_b, "q2", ["c"], [0.5])
    reopened = Checkpoint(path)
    assert reopened.done(key_a, CANDIDATES) == {"q1": {"a": 0.9, "b": 0.1}}
    assert reopened.done(key_b, CANDIDATES) == {"q2": {"c": 0.5}}


def test_a_different_candidate_list_is_not_reused(tmp_path: Path) -> None:
    path = tmp_path / "ck.jsonl"
    with Checkpoint(path) as ck:
        ck.record("k", "q1", ["b", "a"], [0.9, 0.1])  # same documents, other order
        ck.record("k", "q9", ["x"], [0.3])  # a query not in this run
    assert Checkpoint(path).done("k", CANDIDATES) == {}


def test_torn_last_line_is_ignored_and_the_next_record_starts_a_new_line(tmp_path: Path) -> None:
    path = tmp_path / "ck.jsonl"
    with Checkpoint(path) as ck:
        ck.record("k", "q1", ["a", "b"], [0.9, 0.1])
    with path.open("a") as f:
        f.write('{"run": "k", "query_id": "q2", "doc_')  # the process died mid-write
    ck = Checkpoint(path)
    assert ck.skipped_lines == 1 and set(ck.done("k", CANDIDATES)) == {"q1"}
    ck.record("k", "q3", ["d", "e"], [0.2, 0.4])
    ck.close()
    again = Checkpoint(path)
    assert set(again.done("k", CANDIDATES)) == {"q1", "q3"} and again.skipped_lines == 1
    assert json.loads(path.read_text().splitlines()[-1])["query_id"] == "q3"


def test_no_resume_starts_over(tmp_path: Path) -> None:
    path = tmp_path / "ck.jsonl"
    with Checkpoint(path) as ck:
        ck.record("k", "q1", ["a", "b"], [0.9, 0.1])
    assert Checkpoint(path, resume=False).done("k", CANDIDATES) == {}
    assert not path.exists()
