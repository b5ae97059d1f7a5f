"""rerankd's own scoring path without HTTP: ``PromptBuilder`` → the batcher's cut → ``backend.score``.

Why: the in-process benchmarks must time the batches the server forms. :func:`micro_batches` therefore
cuts with :func:`rerankd.engine.batching.cut_batch`, the function ``DynamicBatcher`` itself calls, fed
one request, as the server sees a request that arrives alone.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from rerankd.engine.backends.base import TokenGroup
from rerankd.engine.batching import WaitingRows, cut_batch, dispatch_order
from rerankd.engine.prompt import DEFAULT_INSTRUCTION, PromptBuilder

__all__ = ["Batches", "engine_scores", "micro_batches", "naive_batches", "padded_tokens"]

Batches = list[tuple[list[int], TokenGroup]]
"""Each batch: the request's document indices it holds, and the group the backend scores."""


def micro_batches(shared: list[int], tails: list[list[int]], max_batch_tokens: int) -> Batches:
    """The batches the server cuts one request into: tails shortest first, split by the token budget."""
    order = dispatch_order(tails)
    lengths = [len(tails[i]) for i in order]
    batches: Batches = []
    start = 0
    while start < len(order):
        (taken,) = cut_batch([WaitingRows(len(shared), lengths, start)], max_batch_tokens)
        indices = order[start : start + taken]
        batches.append((indices, TokenGroup(shared, [tails[i] for i in indices])))
        start += taken
    return batches


def naive_batches(shared: list[int], tails: list[list[int]], rows: int) -> Batches:
    """Fixed ``rows`` per batch in request order, as the card does: the "before" of length sorting."""
    return [
        (list(range(i, min(i + rows, len(tails)))), TokenGroup(shared, tails[i : i + rows]))
        for i in range(0, len(tails), rows)
    ]


def padded_tokens(batches: Batches) -> int:
    """Tokens a right-padded forward actually computes (rows × widest row), prefix once per batch."""
    total = 0
    for _, g in batches:
        total += len(g.tails) * max(len(t) for t in g.tails) + len(g.shared)
    return total


def engine_scores(backend: Any, builder: PromptBuilder, query: str, docs: Sequence[str], *,
                  max_batch_tokens: int = 16384, naive_rows: int | None = None,
                  instruction: str = DEFAULT_INSTRUCTION) -> list[float]:
    """rerankd's scores (probabilities) for one request, tokenization included, without HTTP."""
    group = builder.build(query, list(docs), instruction)
    if naive_rows:
        batches = naive_batches(group.shared, group.tails, naive_rows)
    else:
        batches = micro_batches(group.shared, group.tails, max_batch_tokens)
    scores = [0.0] * len(docs)
    for indices, tg in batches:
        raw = backend.score([tg])[0]
        for i, r in zip(indices, raw, strict=True):
            scores[i] = 1.0 / (1.0 + math.exp(-r))
    return scores
