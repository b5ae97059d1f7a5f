"""The dense first stage's search (exact cosine top-k, faiss HNSW) and reciprocal rank fusion, against
hand-made vectors and rankings and brute-force Python."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest

from rerankd.evaluation.dense import EXACT_MAX_DOCUMENTS, choose_index, exact_top_k, hnsw_top_k, normalize
from rerankd.evaluation.fusion import reciprocal_rank_fusion


def brute_force_top_k(queries: np.ndarray, documents: np.ndarray, k: int) -> list[list[int]]:
    """Cosine by its definition in plain Python floats; ties in corpus order."""
    out = []
    for q in queries.tolist():
        sims = []
        for i, d in enumerate(documents.tolist()):
            dot = sum(a * b for a, b in zip(q, d, strict=True))
            sims.append((-dot / (math.sqrt(sum(a * a for a in q)) * math.sqrt(sum(b * b for b in d))), i))
        out.append([i for _, i in sorted(sims)[:k]])
    return out


def test_exact_top_k_is_cosine_not_dot_product() -> None:
    documents = np.array([[10.0, 0.0], [1.0, 1.0], [0.0, 3.0], [-1.0, 0.0]])  # unnormalised on purpose
    query = np.array([[1.0, 1.2]])
    hits = exact_top_k(query, documents, 3)
    # By dot product [0] (10) would win; by cosine [1] (45°) beats [2] (90°... closer to 50°) and [0].
    assert hits.indices[0].tolist() == [1, 2, 0]
    unit = query[0] / np.linalg.norm(query[0])
    assert hits.scores[0].tolist() == pytest.approx([unit @ (documents[i] / np.linalg.norm(documents[i]))
                                                     for i in (1, 2, 0)], abs=1e-6)


def test_exact_top_k_matches_brute_force() -> None:
    rng = np.random.default_rng(3)
    documents = rng.normal(size=(60, 8)).astype(np.float32)
    queries = rng.normal(size=(12, 8)).astype(np.float32)
    for k in (1, 3, 7, 60, 100):
        hits = exact_top_k(queries, documents, k)
        assert [row.tolist() for row in hits.indices] == brute_force_top_k(queries, documents, k)
        assert all(np.all(np.diff(s) <= 0) for s in hits.scores)


def test_exact_top_k_keeps_ties_in_corpus_order_even_at_the_cut() -> None:
    # Components ±0.5 (norm 1) scaled by powers of two: normalising and every dot product are exact in float32,
    # whatever order BLAS sums in, so equal vectors tie exactly.
    rng = np.random.default_rng(4)
    signs = rng.choice([-0.5, 0.5], size=(40, 4))
    documents = (signs * rng.choice([1.0, 2.0, 8.0], size=(40, 1))).astype(np.float32)
    queries = (rng.choice([-0.5, 0.5], size=(10, 4)) * 4.0).astype(np.float32)
    for k in (1, 2, 5, 13, 40):
        hits = exact_top_k(queries, documents, k)
        expected = brute_force_top_k(queries, documents, k)
        assert [row.tolist() for row in hits.indices] == expected
    # The cut falls inside a group of equal scores: the first ones in corpus order are kept.
    row = exact_top_k(queries[:1], documents, 40)
    groups = np.unique(row.scores[0])
    assert len(groups) < 40 and all(np.all(np.diff(row.indices[0][row.scores[0] == g]) > 0) for g in groups)


def test_exact_top_k_in_blocks_equals_one_block(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(0)
    documents, queries = rng.normal(size=(50, 4)), rng.normal(size=(9, 4))
    whole = exact_top_k(queries, documents, 5)
    monkeypatch.setattr("rerankd.evaluation.dense._BLOCK_FLOATS", 100)  # two queries per matrix product
    blocked = exact_top_k(queries, documents, 5)
    assert [r.tolist() for r in blocked.indices] == [r.tolist() for r in whole.indices]


def test_normalize_leaves_a_zero_vector_zero() -> None:
    out = normalize(np.array([[0.0, -8.0], [0.0, 0.0]]))
    assert out.dtype == np.float32 and out.tolist() == [[0.0, -1.0], [0.0, 0.0]]


def test_hnsw_finds_nearly_the_exact_top_k() -> None:
    pytest.importorskip("faiss")
    rng = np.random.default_rng(1)
    documents = rng.normal(size=(2000, 32)).astype(np.float32)
    queries = rng.normal(size=(50, 32)).astype(np.float32)
    exact = exact_top_k(queries, documents, 10)
    approx = hnsw_top_k(queries, documents, 10)
    recall = np.mean([len(set(a.tolist()) & set(e.tolist())) / 10
                      for a, e in zip(approx.indices, exact.indices, strict=True)])
    assert recall >= 0.95
    # Its scores are the same cosines for the documents it finds.
    unit_q, unit_d = normalize(queries), normalize(documents)
    assert approx.scores[0] == pytest.approx(unit_d[approx.indices[0]] @ unit_q[0], abs=1e-5)


def test_auto_index_is_exact_up_to_the_threshold() -> None:
    assert choose_index("auto", EXACT_MAX_DOCUMENTS) == ("exact", None)
    assert choose_index("exact", EXACT_MAX_DOCUMENTS * 10) == ("exact", None)
    pytest.importorskip("faiss")
    assert choose_index("auto", EXACT_MAX_DOCUMENTS + 1) == ("hnsw", None)


def test_rrf_on_hand_made_rankings() -> None:
    bm25 = ["a", "b", "c", "d"]
    dense = ["c", "e", "a"]
    fused = dict(reciprocal_rank_fusion([bm25, dense], k=60))
    assert fused == pytest.approx({"a": 1 / 61 + 1 / 63, "b": 1 / 62, "c": 1 / 63 + 1 / 61, "d": 1 / 64,
                                   "e": 1 / 62})
    order = [d for d, _ in reciprocal_rank_fusion([bm25, dense], k=60)]
    # a and c tie (1/61 + 1/63): a appears first (rank 1 of BM25); b and e tie at 1/62: b is BM25's.
    assert order == ["a", "c", "b", "e", "d"]
    assert [d for d, _ in reciprocal_rank_fusion([bm25, dense], k=60, top=2)] == ["a", "c"]
    # p and q tie (ranks 1 and 3 each); q is met first reading rank by rank (rank 1 of the second list), though
    # p comes first reading the lists one after another.
    three = reciprocal_rank_fusion([["a", "b", "p"], ["q", "c", "d"], ["p", "e", "q"]], k=60)
    assert [d for d, _ in three][:2] == ["q", "p"] and three[0][1] == three[1][1]
    # k changes the balance: with k = 0, rank 1 in one list (1.0) beats ranks 2 and 3 in both (1/2 + 1/3).
    assert [d for d, _ in reciprocal_rank_fusion([["x", "y", "z"], ["w", "z", "y"]], k=0)][:1] == ["x"]
    assert [d for d, _ in reciprocal_rank_fusion([["x", "y", "z"], ["w", "z", "y"]], k=60)][:1] == ["y"]


def test_rrf_matches_its_formula_on_random_rankings() -> None:
    rng = random.Random(5)
    docs = [f"d{i}" for i in range(40)]
    for _ in range(20):
        lists = [rng.sample(docs, rng.randint(0, 25)) for _ in range(rng.randint(1, 3))]
        k = rng.choice([0, 1, 60, 100])
        fused = reciprocal_rank_fusion(lists, k=k)
        expected = {d: sum(1 / (k + r.index(d) + 1) for r in lists if d in r) for r in lists for d in r}
        assert dict(fused) == pytest.approx(expected)
        assert [s for _, s in fused] == sorted((s for _, s in fused), reverse=True)
    assert reciprocal_rank_fusion([[], []]) == []
    with pytest.raises(ValueError, match="RRF k"):
        reciprocal_rank_fusion([["a"]], k=-1)
