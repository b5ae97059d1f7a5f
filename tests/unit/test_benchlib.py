"""bench/benchlib: the benchmarks' batch splits are the batcher's cut; agreement metrics catch ranking changes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchlib.agreement import compare_scores, spearman
from benchlib.engine_path import micro_batches, naive_batches, padded_tokens
from benchlib.results import write_result


def test_a_result_is_written_as_json_into_a_folder_made_for_it(tmp_path: Path) -> None:
    out = write_result(str(tmp_path / "new" / "run.json"), {"rows": [1, 2], "command": "python bench/x.py"})
    assert out == tmp_path / "new" / "run.json"
    assert json.loads(out.read_text()) == {"rows": [1, 2], "command": "python bench/x.py"}
    assert out.read_text().endswith("\n")


def test_micro_batches_sort_by_length_and_respect_the_budget() -> None:
    shared = list(range(10))
    tails = [[1] * n for n in (50, 5, 30, 5, 70, 20)]
    batches = micro_batches(shared, tails, max_batch_tokens=130)
    order = [i for ix, _ in batches for i in ix]
    assert sorted(order) == list(range(6))
    assert [len(tails[i]) for i in order] == sorted(len(t) for t in tails)
    for ix, group in batches:
        width = max(len(t) for t in group.tails) + len(shared)
        assert len(ix) == 1 or len(ix) * width + len(shared) <= 130
        assert group.tails == [tails[i] for i in ix]


def test_naive_batches_keep_request_order_and_pad_more() -> None:
    shared = [0] * 10
    tails = [[1] * n for n in (500, 10, 480, 12, 20, 490)]
    naive = naive_batches(shared, tails, rows=2)
    assert [ix for ix, _ in naive] == [[0, 1], [2, 3], [4, 5]]
    sorted_batches = micro_batches(shared, tails, max_batch_tokens=1100)
    assert padded_tokens(naive) == 2 * 500 + 2 * 480 + 2 * 490 + 3 * 10
    assert padded_tokens(sorted_batches) < padded_tokens(naive) * 0.75


def test_spearman_and_ranking_comparison() -> None:
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    same = compare_scores([0.9, 0.1, 0.5], [0.8, 0.2, 0.6])
    assert same["ranking_identical"] and same["max_abs_delta_score"] == pytest.approx(0.1)
    swapped = compare_scores([0.9, 0.1, 0.5], [0.4, 0.2, 0.6])
    assert not swapped["ranking_identical"] and swapped["spearman"] == pytest.approx(0.5)
