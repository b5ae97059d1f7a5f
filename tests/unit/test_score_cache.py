"""The exact score cache: a hit is the very float a recomputation gives, its memory is bounded, and its key
holds everything a score depends on (model, kernels, prompt tokens after truncation)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from rerankd.engine.config import EngineConfig
from rerankd.engine.engine import RerankEngine, load_engine
from rerankd.engine.score_cache import ScoreCache, model_identity
from rerankd.observability.metrics import ServerMetrics
from rerankd.protocol import RerankTask

QUERY = "which animal eats bamboo"
DOCS = ["The giant panda eats bamboo almost exclusively.", "Koalas eat eucalyptus leaves.",
        "Bamboo is a grass. " * 30, "短文本", "Red pandas also eat bamboo."]


def engine(model_dir: Path, **settings: object) -> RerankEngine:
    config = EngineConfig(model=str(model_dir), device="cpu", dtype="bfloat16", compile="off", **settings)
    return load_engine(config, ServerMetrics())


async def _score(e: RerankEngine, tasks: list[RerankTask]) -> list[list[float]]:
    e.batcher.start()
    try:
        return [o.raw_scores for o in await e.score_all(tasks)]
    finally:
        await e.close()


def test_cached_scores_are_the_recomputed_ones(tiny_model_dir: Path) -> None:
    """Page 1, then page 2 overlapping it, then a retry of page 1: the hits equal what an engine without a
    cache computes for the same pairs in other company (batch-invariant scoring makes that hold)."""
    cached = engine(tiny_model_dir, score_cache=True)
    metrics = cached.metrics
    page1, page2 = RerankTask(QUERY, DOCS[:3]), RerankTask(QUERY, DOCS[1:])
    other = RerankTask("something else entirely", ["x " * 50, "y"])

    async def pages() -> list[list[float]]:
        cached.batcher.start()
        try:
            out = [(await cached.score_all([page1, other]))[0].raw_scores]
            out.append((await cached.score(page2)).raw_scores)
            out.append((await cached.score(page1)).raw_scores)
            return out
        finally:
            await cached.close()

    first, second, retry = asyncio.run(pages())
    (fresh,) = asyncio.run(_score(engine(tiny_model_dir, batch_invariant="on"), [RerankTask(QUERY, DOCS)]))
    assert first == fresh[:3] and second == fresh[1:] and retry == first
    # page 1 + other: 5 misses; page 2: 2 hits, 2 misses; the retry: 3 hits.
    assert metrics.score_cache_hits_total._value.get() == 5
    assert metrics.score_cache_misses_total._value.get() == 7
    assert metrics.score_cache_entries._value.get() == 7


def test_the_key_holds_the_prompt_after_truncation_the_instruction_and_the_kernels(tiny_model_dir: Path) -> None:
    e = engine(tiny_model_dir, score_cache=True)
    tasks = [RerankTask(QUERY, DOCS[2:3]), RerankTask(QUERY, DOCS[2:3], max_tokens_per_doc=8),
             RerankTask(QUERY, DOCS[2:3], instruction="Judge relevance strictly"), RerankTask(QUERY + "?", DOCS[2:3])]
    scores = asyncio.run(_score(e, tasks))
    assert len({s[0] for s in scores}) == 4  # four prompts, four entries, no hit between them
    assert e.metrics.score_cache_hits_total._value.get() == 0
    cache = e.score_cache
    assert cache is not None
    assert cache.key("transformers", [1, 2], [3]) != cache.key("fused-compiled", [1, 2], [3])
    assert cache.key("transformers", [1, 2], [3]) != cache.key("transformers", [1], [2, 3])


def test_least_recently_used_scores_go_first_past_the_bound() -> None:
    metrics = ServerMetrics()
    cache = ScoreCache("model", lambda: "k", 3, metrics)
    computed: list[list[int]] = []

    async def compute(shared: list[int], tails: list[list[int]]) -> list[float]:
        computed.extend(tails)
        return [float(sum(t)) for t in tails]

    async def run() -> None:
        assert await cache.score([0], [[1], [2], [3]], compute) == [1.0, 2.0, 3.0]
        assert await cache.score([0], [[1]], compute) == [1.0]  # a hit: [1] is now the most recent
        assert await cache.score([0], [[4]], compute) == [4.0]  # evicts [2], the least recently used
        assert await cache.score([0], [[1], [3], [4], [2]], compute) == [1.0, 3.0, 4.0, 2.0]

    asyncio.run(run())
    assert computed == [[1], [2], [3], [4], [2]]
    assert len(cache) == 3 and metrics.score_cache_evictions_total._value.get() == 2


def test_a_score_computed_across_a_kernel_swap_is_not_stored() -> None:
    kernels = ["transformers"]
    cache = ScoreCache("model", lambda: kernels[0], 10, ServerMetrics())

    async def swap_while_computing(shared: list[int], tails: list[list[int]]) -> list[float]:
        kernels[0] = "fused-compiled"
        return [0.5 for _ in tails]

    assert asyncio.run(cache.score([0], [[1]], swap_while_computing)) == [0.5]
    assert len(cache) == 0


def test_the_cache_is_refused_where_scores_depend_on_the_batch(tiny_model_dir: Path) -> None:
    with pytest.raises(ValueError, match="--score-cache needs batch-invariant scores"):
        engine(tiny_model_dir, score_cache=True, batch_invariant="off")


def test_the_model_identity_changes_with_the_weights(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"a")
    before = model_identity(tmp_path, "bfloat16")
    assert model_identity(tmp_path, "float32") != before
    weights.write_bytes(b"ab")
    assert model_identity(tmp_path, "bfloat16") != before
