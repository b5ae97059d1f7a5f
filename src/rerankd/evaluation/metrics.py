"""NDCG@k, MRR@k and Recall@k of ranked lists, computed by ``ranx``, and the reranker's relative lift.

Why rankings and not scores go in: a metric depends only on the order of the list, and ties in raw
scores (frequent with BM25) would let the library pick an order of its own. We fix the order first
(see ``bm25`` and ``command``) and hand ``ranx`` strictly decreasing scores derived from rank, so
the numbers are exactly those of the lists we report.

Definitions (``ranx`` follows trec_eval, as pytrec_eval/BEIR/MTEB do): NDCG uses linear gain
(``rel / log2(rank + 1)``), the ideal list being every judged document sorted by grade; MRR is
``1 / rank`` of the first document with relevance ≥ 1 within the top k; Recall is the share of
documents with relevance ≥ 1 found in the top k. A query with no relevant document scores 0.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence

__all__ = ["METRICS", "QueryMetrics", "evaluate_rankings", "metric_names", "relative_lift"]

METRICS = ("ndcg", "mrr", "recall")

QueryMetrics = dict[str, float]
"""Metric name (``ndcg@10``) → value."""


def metric_names(ks: Sequence[int]) -> list[str]:
    """``ndcg@1, ndcg@3, …, mrr@1, …, recall@…`` in a stable order for tables and JSON."""
    return [f"{m}@{k}" for m in METRICS for k in ks]


def evaluate_rankings(
    qrels: Mapping[str, Mapping[str, int]],
    rankings: Mapping[str, Sequence[str]],
    ks: Sequence[int],
) -> tuple[QueryMetrics, dict[str, QueryMetrics]]:
    """Mean and per-query metrics of ``rankings`` (query id → doc ids, best first) against ``qrels``.

    Every query of ``qrels`` is evaluated; a query missing from ``rankings`` counts as an empty list.
    """
    from ranx import Qrels, Run, evaluate

    names = metric_names(ks)
    run_dict = {}
    for query_id in qrels:
        ranked = list(dict.fromkeys(rankings.get(query_id, ())))  # a document counts once, at its best rank
        run_dict[query_id] = {doc_id: float(len(ranked) - i) for i, doc_id in enumerate(ranked)}
    qrels_dict = {q: {d: int(r) for d, r in judged.items()} for q, judged in qrels.items()}
    run = Run(run_dict)
    with warnings.catch_warnings():
        # ranx's compiled NDCG casts its uint64 rank counters to int64; harmless, but noisy on stderr.
        warnings.filterwarnings("ignore", message="unsafe cast from uint64 to int64")
        means = evaluate(Qrels(qrels_dict), run, names, return_mean=True, make_comparable=False)
    if len(names) == 1:  # ranx answers a bare float for a single metric
        means = {names[0]: means}
    per_query = {q: {name: float(run.scores[name][q]) for name in names} for q in qrels}
    return {name: float(means[name]) for name in names}, per_query


def relative_lift(baseline: float, reranked: float) -> float | None:
    """``(reranked - baseline) / baseline``, or ``None`` when the baseline is 0 (no ratio exists)."""
    if baseline == 0:
        return None
    return (reranked - baseline) / baseline
