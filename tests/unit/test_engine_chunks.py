"""Chunked scoring end to end in the engine: a long document's score is exactly the max of its chunks scored
one by one (fp32, the torch backend, the tiny model), and usage counts every chunk.

Why the comparison is exact: each chunk's token list is built here by the test's own arithmetic (the pair
string tokenized as the card does, the head, then windows of the document's tokens), and scored alone with
``backend.score``. The engine under test runs with a batch budget below one prompt, so the batcher sends each
prompt in a batch of its own: the same tokens in the same one-row forward, hence the same float bits.
With the default budget the chunks share their prefix in one batch, which moves the last bits only.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from rerankd.engine.backends.base import TokenGroup
from rerankd.engine.config import EngineConfig
from rerankd.engine.engine import RerankEngine, load_engine
from rerankd.engine.prompt import format_pair
from rerankd.protocol import RerankTask

QUERY = "what is the capital of France?"
LONG = " ".join(f"Paris word{i} Berlin" if i % 37 == 0 else f"word{i}" for i in range(300))  # ~900 tokens


async def started(tiny_model_dir: Path, max_batch_tokens: int) -> RerankEngine:
    config = EngineConfig(model=str(tiny_model_dir), backend="torch", device="cpu", dtype="float32",
                          max_model_len=256, max_batch_tokens=max_batch_tokens, compile="off")
    engine = load_engine(config)
    engine.batcher.start()
    return engine


@pytest.fixture
async def one_row_batches(tiny_model_dir: Path) -> AsyncIterator[RerankEngine]:
    engine = await started(tiny_model_dir, max_batch_tokens=64)  # every prompt here is longer than 64 tokens
    yield engine
    await engine.close()


@pytest.fixture
async def default_batches(tiny_model_dir: Path) -> AsyncIterator[RerankEngine]:
    engine = await started(tiny_model_dir, max_batch_tokens=16384)
    yield engine
    await engine.close()


def pair_tokens(engine: RerankEngine, document: str) -> tuple[list[int], int]:
    """The pair string tokenized as the card does, and how many lead tokens hold no document character."""
    head_chars = len(format_pair(QUERY, ""))
    enc = engine.builder.tokenizer(format_pair(QUERY, document), add_special_tokens=False,
                                   return_offsets_mapping=True)
    return enc["input_ids"], next(i for i, (_, end) in enumerate(enc["offset_mapping"]) if end > head_chars)


def chunk_prompts(engine: RerankEngine, document: str, size: int, overlap: int, max_chunks: int) -> list[list[int]]:
    """The test's own chunk token lists: template, the pair's head tokens, a window of the document's tokens."""
    ids, h = pair_tokens(engine, document)
    builder = engine.builder
    prompts = []
    for start in range(0, len(ids) - h, size - overlap)[:max_chunks]:
        prompts.append(builder.prefix_ids + ids[:h] + ids[h + start:h + start + size] + builder.suffix_ids)
        if h + start + size >= len(ids):
            break
    return prompts


def alone(engine: RerankEngine, prompt: list[int]) -> float:
    return engine.batcher.backend.score([TokenGroup([], [prompt])])[0][0]


async def test_chunked_score_is_exactly_the_max_of_its_chunks_scored_one_by_one(
        one_row_batches: RerankEngine) -> None:
    engine = one_row_batches
    task = RerankTask(QUERY, [LONG, "Paris.", LONG], max_tokens_per_doc=60, max_chunks_per_doc=12,
                      chunk_overlap_tokens=8)
    outcome = await engine.score(task)
    prompts = chunk_prompts(engine, LONG, 60, 8, 12)
    singles = [alone(engine, p) for p in prompts]
    assert len(prompts) == 12 and len(set(singles)) == 12  # 12 chunks, each with its own score
    best = max(singles)
    assert outcome.raw_scores[0] == best == outcome.raw_scores[2]  # bit for bit; a repeated document the same
    assert outcome.chunk_index is not None
    assert outcome.chunk_index[0] == singles.index(best) == outcome.chunk_index[2]
    (short,) = chunk_prompts(engine, "Paris.", 60, 8, 12)
    assert outcome.raw_scores[1] == alone(engine, short) and outcome.chunk_index[1] == 0
    assert outcome.truncated == [True, False, True]  # 12 windows do not reach the end of ~900 tokens
    # usage counts every chunk of every document in full
    assert outcome.prompt_tokens == 2 * sum(len(p) for p in prompts) + len(short)


async def test_chunks_batched_with_their_shared_prefix_give_the_same_best_chunk(
        default_batches: RerankEngine) -> None:
    engine = default_batches
    outcome = await engine.score(RerankTask(QUERY, [LONG], max_chunks_per_doc=1000))
    size = engine.builder.pair_budget - pair_tokens(engine, LONG)[1]  # what the model length leaves after the head
    prompts = chunk_prompts(engine, LONG, size, 0, 1000)
    assert len(prompts) > 3
    singles = [alone(engine, p) for p in prompts]
    assert outcome.chunk_index == [singles.index(max(singles))]
    assert outcome.raw_scores[0] == pytest.approx(max(singles), abs=1e-5)
    assert outcome.truncated == [False] and outcome.prompt_tokens == sum(len(p) for p in prompts)


async def test_without_chunking_the_answer_is_todays(default_batches: RerankEngine) -> None:
    engine = default_batches
    plain = await engine.score(RerankTask(QUERY, [LONG, "Paris."]))
    assert plain.chunk_index is None
    one_chunk = await engine.score(RerankTask(QUERY, [LONG, "Paris."], max_chunks_per_doc=1))
    assert one_chunk.raw_scores == plain.raw_scores and one_chunk.chunk_index == [0, 0]
    assert one_chunk.prompt_tokens == plain.prompt_tokens and one_chunk.truncated == plain.truncated == [True, False]
