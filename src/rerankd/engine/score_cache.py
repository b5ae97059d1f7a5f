"""An exact score cache: the same prompt on the same model and kernels → the score computed before.

Why: clients repeat themselves — a search page re-ranks the same top-k for page 2, a timed-out request is
retried, an A/B job scores the same pairs twice. A pair's raw score is a pure function of

* the model (its directory or hub id, and its weights' identity: ``config.json`` and the weight files'
  names, sizes and modification times), the dtype and the device;
* the code that computes it (the torch backend's kernel path: transformers' forward, or the fused forward
  with compiled kernels; they differ by rounding);
* the prompt tokens after truncation: the shared prefix (system prompt, instruction, query in the template)
  and the document's tail (its tokens after ``max_tokens_per_doc``/model-length truncation, and the
  template's suffix).

So the key is a digest of exactly those, and a hit is the very float a recomputation gives, as long as the
score of a pair does not depend on the other pairs it is batched with: the engine keeps the cache only with
batch-invariant scoring (``--batch-invariant``, :mod:`rerankd.engine.backends.torch_backend`), which
guarantees that. Bounded: least recently used entries go first past ``max_entries`` (each entry is a
16-byte digest and a float, ~180 bytes with the dictionary's own cost: :data:`ENTRY_BYTES`).
"""

from __future__ import annotations

import collections
import hashlib
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path

from rerankd.observability.metrics import ServerMetrics

__all__ = ["ENTRY_BYTES", "ScoreCache", "model_identity"]

# What one entry costs in memory: tracemalloc over 100k entries gave 129 bytes for the OrderedDict's node and
# the float, plus 49 for the 16-byte key object. docs/serve.md sizes --score-cache-entries with it.
ENTRY_BYTES = 180

Compute = Callable[[list[int], list[list[int]]], Awaitable[list[float]]]


def model_identity(model_path: Path, *parts: str) -> str:
    """The model's identity for the key: its resolved path, ``config.json``'s bytes, every weight file's name,
    size and mtime (a re-downloaded or rebuilt model is another model), and ``parts`` (dtype, device...)."""
    digest = hashlib.blake2b(digest_size=16)
    digest.update(str(model_path.resolve()).encode())
    config = model_path / "config.json"
    if config.is_file():
        digest.update(config.read_bytes())
    for weights in sorted(model_path.glob("*.safetensors")) + sorted(model_path.glob("*.bin")):
        stat = weights.stat()
        digest.update(f"{weights.name}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    for part in parts:
        digest.update(b"\0" + part.encode())
    return digest.hexdigest()


class ScoreCache:
    """(model identity, kernels, prefix tokens, tail tokens) → raw score, least recently used evicted first.

    ``kernels()`` names the code computing scores now; it may change once while serving (the compiled
    kernels swapped in), and a score computed across that change is not stored, so no entry ever holds a
    number another path computed. Thread-safe; used from the event loop.
    """

    def __init__(self, identity: str, kernels: Callable[[], str], max_entries: int, metrics: ServerMetrics) -> None:
        if max_entries < 1:
            raise ValueError("a score cache needs room for at least one entry")
        self.identity = identity
        self.kernels = kernels
        self.max_entries = max_entries
        self.metrics = metrics
        self._entries: collections.OrderedDict[bytes, float] = collections.OrderedDict()
        self._lock = threading.Lock()
        metrics.score_cache_capacity.set(max_entries)

    def __len__(self) -> int:
        return len(self._entries)

    def key(self, kernels: str, shared: list[int], tail: list[int]) -> bytes:
        digest = hashlib.blake2b(digest_size=16)
        digest.update(self.identity.encode())
        digest.update(b"\0" + kernels.encode() + b"\0")
        # Token ids as fixed-width bytes, the prefix's length first: no two (prefix, tail) splits collide.
        digest.update(len(shared).to_bytes(4, "little"))
        digest.update(b"".join(t.to_bytes(4, "little") for t in shared))
        digest.update(b"".join(t.to_bytes(4, "little") for t in tail))
        return digest.digest()

    def get(self, key: bytes) -> float | None:
        with self._lock:
            score = self._entries.get(key)
            if score is not None:
                self._entries.move_to_end(key)
            return score

    def put(self, key: bytes, score: float) -> None:
        with self._lock:
            self._entries[key] = score
            self._entries.move_to_end(key)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)
                self.metrics.score_cache_evictions_total.inc()
            self.metrics.score_cache_entries.set(len(self._entries))

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self.metrics.score_cache_entries.set(0)

    async def score(self, shared: list[int], tails: list[list[int]], compute: Compute) -> list[float]:
        """The raw scores of ``shared + tail`` for every tail: hits from the cache, the misses from
        ``compute(shared, missing_tails)`` (one call, or none when everything hit), stored afterwards."""
        kernels = self.kernels()
        keys = [self.key(kernels, shared, t) for t in tails]
        scores: list[float | None] = [self.get(k) for k in keys]
        missing = [i for i, s in enumerate(scores) if s is None]
        self.metrics.score_cache_hits_total.inc(len(tails) - len(missing))
        self.metrics.score_cache_misses_total.inc(len(missing))
        if missing:
            computed = await compute(shared, [tails[i] for i in missing])
            store = self.kernels() == kernels  # else the kernels changed while it ran: which computed it is unknown
            for i, score in zip(missing, computed, strict=True):
                scores[i] = score
                if store:
                    self.put(keys[i], score)
        return [s for s in scores if s is not None]
