"""Reciprocal rank fusion (RRF): the hybrid first stage's merge of the BM25 and dense rankings.

Why RRF: BM25 scores and cosine similarities live on different scales, and RRF uses ranks only, so it needs
no score normalisation and no tuning beyond its constant (Cormack, Clarke & Büttcher, SIGIR 2009:
``score(d) = Σ_lists 1 / (k + rank(d))``, rank 1-based, ``k = 60``). A document absent from a list gets
nothing from it.

Ties (frequent: rank 1 in one list and absent from the other scores the same as rank 1 in the other) are
broken by first appearance when the lists are read rank by rank, the first list first: deterministic, and
the BM25 list (passed first) wins a tie at equal depth.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["DEFAULT_RRF_K", "reciprocal_rank_fusion"]

DEFAULT_RRF_K = 60


def reciprocal_rank_fusion(rankings: Sequence[Sequence[str]], k: float = DEFAULT_RRF_K,
                           top: int | None = None) -> list[tuple[str, float]]:
    """Fuse ``rankings`` (ids, best first) into one list of ``(id, RRF score)``, best first, cut to ``top``."""
    if k < 0:
        raise ValueError(f"RRF k must be >= 0, got {k}")
    scores: dict[str, float] = {}
    first_seen: dict[str, int] = {}
    depth = max((len(r) for r in rankings), default=0)
    for rank in range(depth):
        for ranking in rankings:
            if rank < len(ranking):
                first_seen.setdefault(ranking[rank], len(first_seen))
    for ranking in rankings:
        counted: set[str] = set()
        for rank, doc_id in enumerate(ranking, start=1):
            if doc_id not in counted:  # a repeat in one list counts once, at its best rank
                counted.add(doc_id)
                scores[doc_id] = scores.get(doc_id, 0.0) + 1.0 / (k + rank)
    fused = sorted(scores.items(), key=lambda item: (-item[1], first_seen[item[0]]))
    return fused if top is None else fused[:top]
