"""The evaluation pipeline without the CLI: first-stage candidates (BM25, dense, hybrid) → reranked lists → metrics.

Why apart from ``command``: the pipeline is what tests and other tools (a notebook, the benchmark
suite) want to call with plain arguments; ``command`` only parses flags and prints.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from tqdm.auto import tqdm

from rerankd.client import RerankClient
from rerankd.evaluation.beir import BeirDataset
from rerankd.evaluation.bm25 import Bm25Index
from rerankd.evaluation.checkpoint import Checkpoint
from rerankd.evaluation.dense import IndexKind
from rerankd.evaluation.dense import top_k as top_k_search
from rerankd.evaluation.fusion import reciprocal_rank_fusion
from rerankd.evaluation.metrics import QueryMetrics, evaluate_rankings
from rerankd.tasks import gather_or_cancel

__all__ = ["STAGE_LABELS", "FirstStage", "RerankRun", "bm25_first_stage", "dense_first_stage",
           "hybrid_first_stage", "rerank_order", "rerank_run"]

STAGE_LABELS = {"bm25": "BM25", "dense": "dense", "hybrid": "hybrid"}
"""A first stage's name (``--first-stage``, the report's keys) → its label in the tables."""


@dataclass(frozen=True)
class FirstStage:
    """One first stage's top-k per query (doc ids, best first), their scores (BM25, cosine or RRF) and metrics."""

    name: str
    candidates: dict[str, list[str]]
    scores: dict[str, list[float]]
    metrics: QueryMetrics
    per_query: dict[str, QueryMetrics]

    @property
    def label(self) -> str:
        return STAGE_LABELS.get(self.name, self.name)


@dataclass
class RerankRun:
    """One reranked pass over every query, for one instruction (``None``: the server's default)."""

    instruction: str | None
    scores: dict[str, dict[str, float]] = field(default_factory=dict)
    rankings: dict[str, list[str]] = field(default_factory=dict)
    metrics: QueryMetrics = field(default_factory=dict)
    per_query: dict[str, QueryMetrics] = field(default_factory=dict)
    resumed: int = 0
    """Queries whose scores came from the checkpoint file instead of the reranker."""


def bm25_first_stage(dataset: BeirDataset, language: str, top_k: int, ks: Sequence[int]) -> FirstStage:
    """Index the corpus, retrieve each query's top ``top_k`` and evaluate that ranking."""
    index = Bm25Index(dataset.corpus_texts, language)
    candidates: dict[str, list[str]] = {}
    bm25_scores: dict[str, list[float]] = {}
    for query_id, text in dataset.queries.items():
        hits = index.search(text, top_k)
        candidates[query_id] = [dataset.corpus_ids[h.doc_index] for h in hits]
        bm25_scores[query_id] = [h.score for h in hits]
    return _evaluated("bm25", dataset, candidates, bm25_scores, ks)


def dense_first_stage(dataset: BeirDataset, query_vectors: np.ndarray, document_vectors: np.ndarray, top_k: int,
                      ks: Sequence[int], index: IndexKind = "exact") -> FirstStage:
    """Each query's ``top_k`` documents by cosine similarity (rows: queries in dataset order, corpus order)."""
    hits = top_k_search(index, query_vectors, document_vectors, top_k)
    candidates: dict[str, list[str]] = {}
    cosines: dict[str, list[float]] = {}
    for query_id, found, sims in zip(dataset.queries, hits.indices, hits.scores, strict=True):
        candidates[query_id] = [dataset.corpus_ids[int(i)] for i in found]
        cosines[query_id] = [float(x) for x in sims]
    return _evaluated("dense", dataset, candidates, cosines, ks)


def hybrid_first_stage(dataset: BeirDataset, bm25: FirstStage, dense: FirstStage, top_k: int, ks: Sequence[int],
                       rrf_k: float) -> FirstStage:
    """BM25 and dense fused by reciprocal rank fusion, cut to ``top_k`` (see ``fusion``)."""
    candidates: dict[str, list[str]] = {}
    rrf: dict[str, list[float]] = {}
    for query_id in dataset.queries:
        fused = reciprocal_rank_fusion([bm25.candidates[query_id], dense.candidates[query_id]], rrf_k, top_k)
        candidates[query_id] = [doc_id for doc_id, _ in fused]
        rrf[query_id] = [score for _, score in fused]
    return _evaluated("hybrid", dataset, candidates, rrf, ks)


def _evaluated(name: str, dataset: BeirDataset, candidates: dict[str, list[str]], scores: dict[str, list[float]],
               ks: Sequence[int]) -> FirstStage:
    metrics, per_query = evaluate_rankings(dataset.qrels, candidates, ks)
    return FirstStage(name, candidates, scores, metrics, per_query)


def rerank_order(candidates: Sequence[str], scores: dict[str, float]) -> list[str]:
    """Candidates by reranker score, descending; equal scores keep their first-stage order (as the server does)."""
    position = {doc_id: i for i, doc_id in enumerate(candidates)}
    return sorted(candidates, key=lambda d: (-scores[d], position[d]))


async def rerank_run(
    client: RerankClient,
    dataset: BeirDataset,
    first_stage: FirstStage,
    ks: Sequence[int],
    *,
    instruction: str | None,
    checkpoint: Checkpoint,
    run_key: str,
    progress: bool | None = None,
) -> RerankRun:
    """Rerank every query's candidates (skipping those already in ``checkpoint``) and evaluate."""
    run = RerankRun(instruction)
    text_of = dict(zip(dataset.corpus_ids, dataset.corpus_texts, strict=True))
    run.scores = checkpoint.done(run_key, first_stage.candidates)
    run.resumed = len(run.scores)
    todo = [q for q in dataset.queries if q not in run.scores and first_stage.candidates[q]]
    for q in dataset.queries:  # nothing to rerank: the first stage found no candidate
        if not first_stage.candidates[q]:
            run.scores.setdefault(q, {})

    label = "rerank" if instruction is None else f"rerank [{instruction[:30]}]"
    bar = tqdm(total=len(dataset.queries), initial=len(dataset.queries) - len(todo), desc=label,
               unit="query", disable=None if progress is None else not progress,  # None: only on a terminal
               dynamic_ncols=True)

    async def one(query_id: str) -> None:
        doc_ids = first_stage.candidates[query_id]
        scores = await client.scores(dataset.queries[query_id], [text_of[d] for d in doc_ids], instruction)
        checkpoint.record(run_key, query_id, doc_ids, scores)
        run.scores[query_id] = dict(zip(doc_ids, scores, strict=True))
        bar.update(1)

    try:
        await gather_or_cancel([one(q) for q in todo])
    finally:
        bar.close()

    run.rankings = {q: rerank_order(first_stage.candidates[q], run.scores[q]) for q in dataset.queries}
    run.metrics, run.per_query = evaluate_rankings(dataset.qrels, run.rankings, ks)
    return run
