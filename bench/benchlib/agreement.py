"""How far one list of scores is from another: the numbers every precision and speed ablation reports."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from typing import Any

__all__ = ["compare_scores", "spearman"]


def _ranks(xs: Sequence[float]) -> list[float]:
    order = sorted(range(len(xs)), key=lambda i: xs[i])
    r = [0.0] * len(xs)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and xs[order[j + 1]] == xs[order[i]]:
            j += 1
        for k in range(i, j + 1):
            r[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return r


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman rank correlation (average ranks for ties)."""
    ra, rb = _ranks(a), _ranks(b)
    ma, mb = statistics.fmean(ra), statistics.fmean(rb)
    cov = sum((x - ma) * (y - mb) for x, y in zip(ra, rb, strict=True))
    va = math.sqrt(sum((x - ma) ** 2 for x in ra))
    vb = math.sqrt(sum((y - mb) ** 2 for y in rb))
    return cov / (va * vb) if va and vb else float("nan")


def _top(xs: Sequence[float], k: int) -> list[int]:
    return sorted(range(len(xs)), key=lambda i: (-xs[i], i))[:k]


def compare_scores(ref: Sequence[float], other: Sequence[float], k: int = 10) -> dict[str, Any]:
    """How far ``other`` is from ``ref``: max |Δ|, Spearman, and whether the ranking is the same."""
    return {
        "max_abs_delta_score": max(abs(x - y) for x, y in zip(ref, other, strict=True)),
        "spearman": spearman(ref, other),
        "ranking_identical": _top(ref, len(ref)) == _top(other, len(other)),
        f"top{k}_identical_order": _top(ref, k) == _top(other, k),
        f"top{k}_overlap": len(set(_top(ref, k)) & set(_top(other, k))),
    }
