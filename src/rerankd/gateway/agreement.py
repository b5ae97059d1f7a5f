"""How far two rerankers' answers to the same request agree: per-document score drift, Spearman's rho, top-k overlap.

Why these three: a new model or revision can move every score a little (a calibration change: drift) without
changing the order, or keep the scores close and swap the documents that matter (the top of the list). Drift says
whether thresholds clients apply to ``relevance_score`` still hold; Spearman's rho says whether the whole order
holds; top-k overlap says whether what a client shows (the first ``k``) holds. The shadow rollout
(:mod:`rerankd.gateway.shadow`) exports all three per request.

Written by hand (a few lines each) rather than taken from scipy, which the gateway does not otherwise need.
Ties get average ranks, as ``scipy.stats.spearmanr`` gives them, so rho is the Pearson correlation of the ranks.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from rerankd.gateway.answers import AnswerShape

__all__ = ["Agreement", "average_ranks", "compare_scores", "scores_of", "spearman", "top_k_overlap"]

# shape -> (the list's key in the answer, None for a bare list; the score's field name)
_SCORED: dict[AnswerShape, tuple[str | None, str]] = {
    AnswerShape.RERANK: ("results", "relevance_score"),
    AnswerShape.TEI: (None, "score"),
    AnswerShape.SCORE: ("data", "score"),
}


@dataclass(frozen=True)
class Agreement:
    """One request's comparison over the documents both answers scored.

    ``drifts`` holds ``|live - shadow|`` per document; ``spearman`` is None below two documents or when either
    side gives every document the same score (rho is undefined); ``top_k_overlap`` is None without documents.
    """

    documents: int
    drifts: list[float]
    spearman: float | None
    top_k_overlap: float | None


def scores_of(shape: AnswerShape, answer: Any) -> dict[int, float]:
    """Each input's score in an answer already checked to be of ``shape`` (by
    :func:`~rerankd.gateway.answers.check_answer`)."""
    key, field = _SCORED[shape]
    items = answer if key is None else answer[key]
    return {int(item["index"]): float(item[field]) for item in items}


def average_ranks(values: Sequence[float]) -> list[float]:
    """1-based ranks of ``values`` in ascending order; tied values share the mean of the ranks they span."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    start = 0
    while start < len(order):
        end = start
        while end + 1 < len(order) and values[order[end + 1]] == values[order[start]]:
            end += 1
        shared = (start + end) / 2 + 1
        for position in range(start, end + 1):
            ranks[order[position]] = shared
        start = end + 1
    return ranks


def spearman(xs: Sequence[float], ys: Sequence[float]) -> float | None:
    """Spearman's rank correlation of two equally long score lists (None when it is undefined)."""
    if len(xs) != len(ys):
        raise ValueError(f"spearman needs lists of one length, got {len(xs)} and {len(ys)}")
    if len(xs) < 2:
        return None
    rx, ry = average_ranks(xs), average_ranks(ys)
    mean = (len(xs) + 1) / 2  # the mean rank, ties or not
    cov = sum((a - mean) * (b - mean) for a, b in zip(rx, ry, strict=True))
    var_x = sum((a - mean) ** 2 for a in rx)
    var_y = sum((b - mean) ** 2 for b in ry)
    if var_x == 0 or var_y == 0:
        return None
    return max(-1.0, min(1.0, cov / math.sqrt(var_x * var_y)))


def top_k_overlap(live: Mapping[int, float], shadow: Mapping[int, float], k: int) -> float | None:
    """The share of the live answer's best ``k`` documents that are also the shadow's best ``k``.

    Over the documents both score; ``k`` is cut to their number. Ties are broken by the lower index, the
    order rerankd's own answers use.
    """
    common = live.keys() & shadow.keys()
    if not common or k < 1:
        return None
    k = min(k, len(common))

    def best(scores: Mapping[int, float]) -> set[int]:
        return set(sorted(common, key=lambda i: (-scores[i], i))[:k])

    return len(best(live) & best(shadow)) / k


def compare_scores(live: Mapping[int, float], shadow: Mapping[int, float], k: int) -> Agreement:
    """Drift, rho and top-``k`` overlap of two answers, over the documents both scored (with ``top_n``, the
    documents that both returned)."""
    common = sorted(live.keys() & shadow.keys())
    xs = [live[i] for i in common]
    ys = [shadow[i] for i in common]
    return Agreement(documents=len(common), drifts=[abs(a - b) for a, b in zip(xs, ys, strict=True)],
                     spearman=spearman(xs, ys), top_k_overlap=top_k_overlap(live, shadow, k))
