"""The search page's arithmetic: which passages a corpus may hold, the embedder's top-k by cosine, and the
corpus vectors kept between searches.

Why plain functions without Gradio or HTTP: the rules (how many passages, how k is clamped, how ties are
ordered) decide what the person at the page sees, so they have their own unit tests, and the e2e tests
compare the page with the same arithmetic done on the API's own vectors.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "CorpusError",
    "CorpusVectors",
    "DenseHit",
    "check_corpus",
    "clamp_top_k",
    "corpus_key",
    "top_k_by_cosine",
]


class CorpusError(ValueError):
    """A corpus the page cannot search (empty, or more passages than ``--max-corpus``); the message says why."""


@dataclass(frozen=True)
class DenseHit:
    """One passage the embedder kept: 1-based ``rank`` by cosine, its position in the corpus, the cosine."""

    rank: int
    index: int
    cosine: float


def check_corpus(passages: Sequence[str], max_passages: int) -> None:
    """Refuse an empty corpus or one over ``max_passages``, with the sentence the page shows."""
    if not passages:
        raise CorpusError("Add at least one passage: one per line, or upload a .txt/.jsonl/.csv file.")
    if len(passages) > max_passages:
        raise CorpusError(
            f"The corpus has {len(passages)} passages; this UI searches at most {max_passages} "
            "(`--max-corpus`). Search a smaller part of it, or start the UI with a larger `--max-corpus`."
        )


def clamp_top_k(top_k: float | None, corpus_size: int, max_top_k: int) -> int:
    """How many passages go to the reranker: ``top_k`` (empty or below 1 means 1) capped by the corpus and the UI."""
    wanted = int(top_k) if top_k is not None and top_k >= 1 else 1
    return min(wanted, corpus_size, max_top_k)


def top_k_by_cosine(query: np.ndarray, passages: np.ndarray, k: int) -> list[DenseHit]:
    """The ``k`` passages most similar to ``query`` by cosine, best first; equal cosines keep corpus order.

    Vectors are normalised here rather than trusted to be unit length: the endpoint may be another
    service, and a zero vector (cosine undefined) counts as 0 instead of turning the ranking into NaN.
    """
    if passages.ndim != 2 or query.ndim != 1 or passages.shape[1] != query.shape[0]:
        raise ValueError(f"query of shape {query.shape} against passages of shape {passages.shape}")
    query_norm = float(np.linalg.norm(query))
    norms = np.linalg.norm(passages, axis=1)
    denominators = np.where(norms > 0, norms, 1.0) * (query_norm if query_norm > 0 else 1.0)
    cosines = (passages.astype(np.float64) @ query.astype(np.float64)) / denominators
    # A stable sort on the negated cosines: ties keep their corpus order, so the ranking is reproducible.
    order = np.argsort(-cosines, kind="stable")[: max(0, k)]
    return [DenseHit(rank=rank, index=int(i), cosine=float(cosines[i])) for rank, i in enumerate(order, start=1)]


def corpus_key(model: str, passages: Sequence[str]) -> str:
    """The cache key of a corpus's vectors: the embedding model's name and every passage, in order."""
    digest = hashlib.sha256(model.encode())
    for passage in passages:
        digest.update(b"\0" + passage.encode())
    return digest.hexdigest()


class CorpusVectors:
    """The vectors of the last few corpora searched, so a second query over the same corpus embeds only itself.

    Why: a person tries several queries over one pasted corpus, and embedding a thousand passages again for
    each is most of the wait. Keyed by :func:`corpus_key`, so another model (the query's answer names it)
    or one changed passage misses; bounded by the number of vectors held, oldest corpus first out.
    """

    def __init__(self, max_vectors: int = 20_000) -> None:
        self._max_vectors = max_vectors
        self._entries: OrderedDict[str, np.ndarray] = OrderedDict()
        self._held = 0
        self._lock = threading.Lock()

    def get(self, key: str) -> np.ndarray | None:
        with self._lock:
            vectors = self._entries.get(key)
            if vectors is not None:
                self._entries.move_to_end(key)
            return vectors

    def put(self, key: str, vectors: np.ndarray) -> None:
        if len(vectors) > self._max_vectors:
            return
        with self._lock:
            old = self._entries.pop(key, None)
            self._held -= 0 if old is None else len(old)
            self._entries[key] = vectors
            self._held += len(vectors)
            while self._held > self._max_vectors:
                _, dropped = self._entries.popitem(last=False)
                self._held -= len(dropped)

    def __len__(self) -> int:
        return len(self._entries)
