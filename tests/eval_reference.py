"""Independent reference implementations for the evaluation tests: IR metrics and BM25, written out
from their textbook definitions with plain Python floats, sharing no code with ``rerankd.evaluation``
(beyond the tokenizer whose output they consume) and none with ``ranx`` or ``bm25s``.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence


def ndcg_at_k(ranking: Sequence[str], judged: Mapping[str, int], k: int) -> float:
    """trec_eval ``ndcg_cut``: linear gain rel / log2(rank + 1); ideal = every judged grade, sorted."""
    dcg = sum(judged.get(d, 0) / math.log2(i + 2) for i, d in enumerate(ranking[:k]) if judged.get(d, 0) > 0)
    ideal = sorted((g for g in judged.values() if g > 0), reverse=True)[:k]
    idcg = sum(g / math.log2(i + 2) for i, g in enumerate(ideal))
    return dcg / idcg if idcg else 0.0


def mrr_at_k(ranking: Sequence[str], judged: Mapping[str, int], k: int) -> float:
    for i, d in enumerate(ranking[:k]):
        if judged.get(d, 0) >= 1:
            return 1.0 / (i + 1)
    return 0.0


def recall_at_k(ranking: Sequence[str], judged: Mapping[str, int], k: int) -> float:
    relevant = {d for d, g in judged.items() if g >= 1}
    if not relevant:
        return 0.0
    return len(relevant & set(ranking[:k])) / len(relevant)


def mean_metrics(qrels: Mapping[str, Mapping[str, int]], rankings: Mapping[str, Sequence[str]],
                 ks: Sequence[int]) -> dict[str, float]:
    """Mean over every query of ``qrels`` (a query without a ranking counts as an empty list)."""
    out: dict[str, float] = {}
    for name, fn in (("ndcg", ndcg_at_k), ("mrr", mrr_at_k), ("recall", recall_at_k)):
        for k in ks:
            values = [fn(rankings.get(q, []), judged, k) for q, judged in qrels.items()]
            out[f"{name}@{k}"] = sum(values) / len(values)
    return out


def bm25_scores(corpus_tokens: Sequence[Sequence[str]], query_tokens: Sequence[str],
                k1: float = 1.5, b: float = 0.75) -> list[float]:
    """Lucene BM25 (Kamphuis et al. 2020): idf = ln(1 + (N - df + 0.5) / (df + 0.5)),
    term weight = tf / (tf + k1 * (1 - b + b * |d| / avgdl)); a repeated query term counts each time."""
    n = len(corpus_tokens)
    avgdl = sum(len(d) for d in corpus_tokens) / n
    df = Counter(t for d in corpus_tokens for t in set(d))
    tfs = [Counter(d) for d in corpus_tokens]
    scores = []
    for tf, doc in zip(tfs, corpus_tokens, strict=True):
        score = 0.0
        for term in query_tokens:
            if tf[term]:
                idf = math.log(1 + (n - df[term] + 0.5) / (df[term] + 0.5))
                score += idf * tf[term] / (tf[term] + k1 * (1 - b + b * len(doc) / avgdl))
        scores.append(score)
    return scores


def bm25_top_k(corpus_tokens: Sequence[Sequence[str]], query_tokens: Sequence[str], k: int) -> list[tuple[int, float]]:
    """Positive-score documents, best first, ties by corpus order, cut to ``k``."""
    scores = bm25_scores(corpus_tokens, query_tokens)
    ranked = sorted((i for i, s in enumerate(scores) if s > 0), key=lambda i: (-scores[i], i))
    return [(i, scores[i]) for i in ranked[:k]]
