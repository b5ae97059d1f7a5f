"""The dense first stage's search: each query's top-k documents by cosine similarity of embedding vectors.

Why exact search by default: an evaluation's numbers must be those of the embedding model, not of an
index's approximation, and exact search is cheap next to embedding the corpus (one matrix product per block
of queries; BEIR and MTEB search exactly too). Past ``EXACT_MAX_DOCUMENTS`` documents (``--dense-index
auto``) every query's scan of the whole corpus starts to cost more than the rest of the run, and an HNSW
graph (``faiss``, the ``ann`` extra) answers in a fraction of it at a recall close to 1 (docs/eval.md has
the measurement behind the threshold).

Equal cosines in exact search keep corpus order, as BM25's ties do, so a ranking never depends on numpy's
partitioning. (A matrix product may round the cosines of two identical documents one float32 step apart, so
exact duplicates can come in either order; nothing else can swap.)
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

__all__ = ["EXACT_MAX_DOCUMENTS", "DenseHits", "build_hnsw", "choose_index", "exact_top_k", "hnsw_top_k", "normalize",
           "top_k"]

EXACT_MAX_DOCUMENTS = 1_000_000
"""``--dense-index auto`` searches exactly up to this many documents, with HNSW above (when faiss is installed)."""

_BLOCK_FLOATS = 16 * 1024 * 1024
"""Scores computed per matrix product (64 MiB of float32): bounds memory whatever the corpus size."""

IndexKind = Literal["exact", "hnsw"]


@dataclass(frozen=True)
class DenseHits:
    """Per query (rows in query order): corpus indices, best first, and their cosine similarities."""

    indices: list[np.ndarray]
    scores: list[np.ndarray]


def normalize(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (a zero row stays zero), as float32: a dot product is then the cosine."""
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.where(norms == 0, 1.0, norms)


def _top_of_row(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` best scores: descending, equal scores in index order (exactly, even at the cut)."""
    n = scores.shape[0]
    if k >= n:
        chosen = np.arange(n)
    else:
        kth = np.partition(scores, n - k)[n - k]  # the k-th largest value
        above = np.flatnonzero(scores > kth)
        chosen = np.concatenate([above, np.flatnonzero(scores == kth)[:k - above.size]])
    return chosen[np.lexsort((chosen, -scores[chosen]))]


def exact_top_k(queries: np.ndarray, documents: np.ndarray, k: int) -> DenseHits:
    """Exact top ``k`` by cosine similarity, for every query row, searching the documents in blocks."""
    q = normalize(queries)
    d = normalize(documents)
    block = max(1, _BLOCK_FLOATS // max(1, d.shape[0]))
    indices: list[np.ndarray] = []
    scores: list[np.ndarray] = []
    for start in range(0, q.shape[0], block):
        sims = q[start:start + block] @ d.T
        for row in sims:
            top = _top_of_row(row, k)
            indices.append(top)
            scores.append(row[top])
    return DenseHits(indices, scores)


def build_hnsw(documents: np.ndarray, *, m: int = 32, ef_construction: int = 200) -> Any:
    """A faiss HNSW graph over the documents' unit vectors, inner product (= cosine) as its metric.

    ``m = 32`` links per node and ``ef_construction = 200`` are faiss's usual settings for high recall at
    1024 dimensions. Requires ``faiss`` (``pip install 'rerankd[ann]'``).
    """
    import faiss

    d = normalize(documents)
    index = faiss.IndexHNSWFlat(d.shape[1], m, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = ef_construction
    index.add(d)
    return index


def hnsw_top_k(queries: np.ndarray, documents: np.ndarray, k: int, *, index: Any = None,
               ef_search: int | None = None) -> DenseHits:
    """Approximate top ``k`` from an HNSW graph (``index``, else one built by :func:`build_hnsw`).

    ``ef_search`` defaults to ``max(128, 2k)``: the candidate list must be longer than ``k`` for the top-k to
    be near exact.
    """
    index = build_hnsw(documents) if index is None else index
    index.hnsw.efSearch = ef_search or max(128, 2 * k)
    found_scores, found = index.search(normalize(queries), min(k, index.ntotal))
    keep = [row >= 0 for row in found]  # faiss pads with -1 when the graph yields fewer than k
    return DenseHits([row[ok].astype(np.int64) for row, ok in zip(found, keep, strict=True)],
                     [row[ok] for row, ok in zip(found_scores, keep, strict=True)])


def choose_index(requested: str, documents: int) -> tuple[IndexKind, str | None]:
    """The index ``--dense-index`` asks for (``auto``, ``exact``, ``hnsw``) and a note for the user, if any."""
    has_faiss = importlib.util.find_spec("faiss") is not None
    if requested == "hnsw":
        if not has_faiss:
            raise ModuleNotFoundError("--dense-index hnsw needs faiss: pip install 'rerankd[ann]'")
        return "hnsw", None
    if requested == "exact" or documents <= EXACT_MAX_DOCUMENTS:
        return "exact", None
    if not has_faiss:
        return "exact", (f"{documents} documents: exact dense search scans them all for every query; "
                         "pip install 'rerankd[ann]' for an HNSW index (--dense-index auto picks it)")
    return "hnsw", None


def top_k(kind: IndexKind, queries: np.ndarray, documents: np.ndarray, k: int) -> DenseHits:
    """Search with the chosen index."""
    return hnsw_top_k(queries, documents, k) if kind == "hnsw" else exact_top_k(queries, documents, k)
