"""The vllm backend's embedding task on vLLM's CPU build: vLLM's pooling runner (``convert="embed"``, the model's
own last-token pooling) gives the torch backend's vectors for the same token ids."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from rerankd.devtools.random_model import build_random_model
from rerankd.engine.backends.base import TokenGroup
from rerankd.engine.backends.torch_backend import TorchBackend
from rerankd.engine.backends.vllm_backend import VllmBackend
from rerankd.engine.embedding import EmbeddingPromptBuilder, finish_vectors, format_query
from rerankd.engine.model_source import load_tokenizer

# A vllm.LLM start takes ~35 s on two idle cores and several minutes on a loaded machine (298 s seen).
pytestmark = pytest.mark.timeout(900)

TEXTS = ["HNSW builds a layered proximity graph over the vectors.", "如何实现Python中的异步爬虫",
         "def crawl(urls):\n    return [get(u) for u in urls]"]


@pytest.fixture(scope="module")
def embed_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_random_model(tmp_path_factory.mktemp("models") / "small-qwen3-embedding", "embed-small", seed=0)


@pytest.fixture(scope="module")
def vllm_embedder(embed_dir: Path) -> Iterator[VllmBackend]:
    tokenizer = load_tokenizer(embed_dir)
    backend = VllmBackend(embed_dir, yes_token_id=tokenizer.convert_tokens_to_ids("yes"),
                          no_token_id=tokenizer.convert_tokens_to_ids("no"), max_model_len=512, device="cpu",
                          dtype="float32", gpu_memory_utilization=0.2, task="embed")
    yield backend
    backend.close()


def _groups(tokenizer: Any) -> list[TokenGroup]:
    builder = EmbeddingPromptBuilder(tokenizer, 512)
    documents = builder.build(TEXTS)
    queries = builder.build(TEXTS, prefix=format_query(""))
    return [TokenGroup(g.shared, g.tails) for g in (documents, queries)]


def test_vllm_embeds_like_the_torch_backend(vllm_embedder: VllmBackend, embed_dir: Path) -> None:
    groups = _groups(load_tokenizer(embed_dir))
    torch_backend = TorchBackend(embed_dir, yes_token_id=0, no_token_id=0, max_model_len=512, device="cpu",
                                 dtype="float32", task="embed")
    try:
        expected = [finish_vectors(np.stack(g)) for g in torch_backend.embed(groups)]
    finally:
        torch_backend.close()
    got = [finish_vectors(np.stack(g)) for g in vllm_embedder.embed(groups)]
    for e, g in zip(expected, got, strict=True):
        assert e.shape == g.shape == (len(TEXTS), 128)
        assert np.abs(e - g).max() <= 1e-4
        assert (e * g).sum(axis=1).min() >= 1 - 1e-4
    assert np.abs(expected[0] - expected[1]).max() > 1e-3  # queries and documents differ
    assert vllm_embedder.hidden_size == 128
    assert vllm_embedder.embed([]) == []
