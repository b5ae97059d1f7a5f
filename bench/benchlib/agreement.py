"""How far one list of scores is from another: the numbers every precision and speed ablation reports."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from typing import Any

from rerankd.gateway.agreement import average_ranks

__all__ = ["compare_scores", "spearman"]


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman rank correlation (average ranks for ties, ranked by the gateway's own :func:`average_ranks`).

    Kept apart from :func:`rerankd.gateway.agreement.spearman` because the ablation reports print ``nan``
    (not None) where rho is undefined."""
    ra, rb = average_ranks(a), average_ranks(b)
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
