"""The agreement helpers behind the shadow rollout's metrics: ranks with ties, Spearman's rho, top-k overlap,
per-document drift, and reading scores out of each rerank answer shape.

Expected values are worked out by hand (scipy is not a dependency): for untied lists rho is
1 - 6·Σd² / (n(n²-1)); for tied ones, the Pearson correlation of average ranks."""

from __future__ import annotations

import math

import pytest

from rerankd.gateway.agreement import average_ranks, compare_scores, scores_of, spearman, top_k_overlap
from rerankd.gateway.answers import AnswerShape


def test_average_ranks_share_the_mean_of_tied_places() -> None:
    assert average_ranks([0.3, 0.1, 0.2]) == [3.0, 1.0, 2.0]
    assert average_ranks([0.5, 0.1, 0.5, 0.9]) == [2.5, 1.0, 2.5, 4.0]
    assert average_ranks([1.0, 1.0, 1.0]) == [2.0, 2.0, 2.0]
    assert average_ranks([]) == []


def test_spearman_of_same_reversed_and_untied_orders() -> None:
    assert spearman([0.1, 0.2, 0.3, 0.4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([0.1, 0.2, 0.3, 0.4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # ranks 1 2 3 4 5 against 2 1 4 3 5: Σd² = 4, rho = 1 - 6·4 / (5·24) = 0.8
    assert spearman([1, 2, 3, 4, 5], [0.2, 0.1, 0.4, 0.3, 0.5]) == pytest.approx(0.8)
    # monotone transforms do not change it: only the order counts
    assert spearman([1, 2, 3, 4, 5], [math.exp(v) for v in (0.2, 0.1, 0.4, 0.3, 0.5)]) == pytest.approx(0.8)


def test_spearman_with_ties_is_the_pearson_correlation_of_average_ranks() -> None:
    # x ranks 1 2 3 4; y = [1, 2, 2, 3] ranks 1 2.5 2.5 4. Centred (mean 2.5): x -1.5 -.5 .5 1.5, y -1.5 0 0 1.5
    # cov = 2.25 + 2.25 = 4.5; var x = 5, var y = 4.5: rho = 4.5 / sqrt(22.5)
    assert spearman([1, 2, 3, 4], [1, 2, 2, 3]) == pytest.approx(4.5 / math.sqrt(22.5))


def test_spearman_is_undefined_for_fewer_than_two_or_constant_scores() -> None:
    assert spearman([], []) is None
    assert spearman([0.4], [0.9]) is None
    assert spearman([0.5, 0.5, 0.5], [0.1, 0.2, 0.3]) is None
    with pytest.raises(ValueError, match="one length"):
        spearman([1, 2], [1])


def test_top_k_overlap_counts_shared_best_documents() -> None:
    live = {0: 0.9, 1: 0.8, 2: 0.7, 3: 0.1}
    shadow = {0: 0.9, 1: 0.1, 2: 0.7, 3: 0.8}  # top 2: {0, 3} against live's {0, 1}
    assert top_k_overlap(live, shadow, 2) == 0.5
    assert top_k_overlap(live, shadow, 3) == pytest.approx(2 / 3)  # {0,1,2} vs {0,2,3}
    assert top_k_overlap(live, shadow, 10) == 1.0  # k cut to the 4 documents: the same set
    assert top_k_overlap(live, live, 1) == 1.0
    assert top_k_overlap({}, shadow, 3) is None
    # ties break on the lower index, as rerankd orders its answers
    assert top_k_overlap({0: 0.5, 1: 0.5}, {0: 0.1, 1: 0.9}, 1) == 0.0


def test_compare_scores_uses_the_documents_both_answers_scored() -> None:
    live = {0: 0.9, 1: 0.5, 2: 0.2}  # with top_n an answer leaves documents out
    shadow = {0: 0.7, 2: 0.3, 5: 0.99}
    agreement = compare_scores(live, shadow, 1)
    assert agreement.documents == 2
    assert agreement.drifts == pytest.approx([0.2, 0.1])
    assert agreement.spearman == pytest.approx(1.0)
    assert agreement.top_k_overlap == 1.0


@pytest.mark.parametrize(("shape", "answer"), [
    (AnswerShape.RERANK, {"results": [{"index": 2, "relevance_score": 0.7}, {"index": 0, "relevance_score": 0.1}]}),
    (AnswerShape.TEI, [{"index": 2, "score": 0.7}, {"index": 0, "score": 0.1}]),
    (AnswerShape.SCORE, {"data": [{"index": 2, "score": 0.7}, {"index": 0, "score": 0.1}]}),
])
def test_scores_of_each_shape(shape: AnswerShape, answer: object) -> None:
    assert scores_of(shape, answer) == {2: 0.7, 0: 0.1}
