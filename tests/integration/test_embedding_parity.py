"""rerankd's embedding vectors equal the Qwen3-Embedding model card's transformers recipe (float32, 1e-4).

The reference is the card's own code (``last_token_pool``, ``get_detailed_instruct``, the tokenizer loaded with
``padding_side='left'``, ``truncation=True, max_length=...``, ``F.normalize``) on the same random weights; the
Matryoshka reference is the card's vector cut to d components and normalised again.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModel, AutoTokenizer

from rerankd.devtools.random_model import build_random_model
from rerankd.server.settings import ServerSettings
from support import running_server

MAX_LEN = 128  # the server's --max-model-len, and the card's max_length here
TASK = "Given a web search query, retrieve relevant passages that answer the query"
CODE_TASK = "Given a programming question, retrieve code that answers it"
QUERIES = ["What is the capital of China?", "如何实现Python中的异步爬虫", "Explain gravity"]
DOCUMENTS = [
    "The capital of China is Beijing.",
    "使用 asyncio 和 aiohttp 可以实现高效的异步爬虫，配合信号量控制并发。",
    "def crawl(urls):\n    async with aiohttp.ClientSession() as s:\n"
    "        return await asyncio.gather(*map(s.get, urls))",
    "Gravity is a force that attracts two bodies towards each other. " * 20,  # cut by --max-model-len
    "",
]


def last_token_pool(last_hidden_states: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """The model card's function, verbatim."""
    left_padding = (attention_mask[:, -1].sum() == attention_mask.shape[0])
    if left_padding:
        return last_hidden_states[:, -1]
    sequence_lengths = attention_mask.sum(dim=1) - 1
    batch_size = last_hidden_states.shape[0]
    return last_hidden_states[torch.arange(batch_size, device=last_hidden_states.device), sequence_lengths]


def get_detailed_instruct(task_description: str, query: str) -> str:
    return f"Instruct: {task_description}\nQuery:{query}"


def card_embeddings(model_dir: Path, input_texts: list[str]) -> np.ndarray:
    """The card's transformers usage, apart from the model path and max_length."""
    tokenizer = AutoTokenizer.from_pretrained(model_dir, padding_side="left")
    model = AutoModel.from_pretrained(model_dir, dtype=torch.float32).eval()
    batch_dict = tokenizer(input_texts, padding=True, truncation=True, max_length=MAX_LEN, return_tensors="pt")
    with torch.no_grad():
        outputs = model(**batch_dict)
    embeddings = last_token_pool(outputs.last_hidden_state, batch_dict["attention_mask"])
    return F.normalize(embeddings, p=2, dim=1).numpy()


def mrl(vectors: np.ndarray, d: int) -> np.ndarray:
    cut = torch.from_numpy(vectors[:, :d])
    return F.normalize(cut, p=2, dim=1).numpy()


@pytest.fixture(scope="module")
def mrl_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_random_model(tmp_path_factory.mktemp("models") / "embed-mrl", "embed-mrl", seed=1)


@pytest.fixture(scope="module")
def url(mrl_model_dir: Path) -> Iterator[str]:
    # transformers' forward (--compile off): compiling the fused kernels for this shape takes minutes on a loaded
    # 2-core machine; the fused forward gives the same final hidden states (tests/unit/test_fused_forward.py).
    settings = ServerSettings(model=str(mrl_model_dir), served_model_name="mrl-embedder", device="cpu",
                              dtype="float32", max_model_len=MAX_LEN, compile="off")
    with running_server(settings) as base:
        yield base


def close(ours: np.ndarray, reference: np.ndarray) -> None:
    assert ours.shape == reference.shape
    assert np.abs(ours - reference).max() <= 1e-4
    cosine = (ours * reference).sum(axis=1) / np.linalg.norm(ours, axis=1) / np.linalg.norm(reference, axis=1)
    assert np.abs(1 - cosine).max() <= 1e-4


def openai(url: str, body: dict) -> np.ndarray:
    answer = httpx.post(f"{url}/v1/embeddings", json=body, timeout=60)
    assert answer.status_code == 200, answer.text
    return np.array([d["embedding"] for d in answer.json()["data"]], dtype=np.float32)


@pytest.mark.parametrize("dimensions", [64, 256, None])
def test_documents_match_the_card(url: str, mrl_model_dir: Path, dimensions: int | None) -> None:
    reference = card_embeddings(mrl_model_dir, DOCUMENTS)
    if dimensions:
        reference = mrl(reference, dimensions)
    close(openai(url, {"input": DOCUMENTS, "dimensions": dimensions}), reference)
    # The random model must tell texts apart, or the comparison proves little.
    similarity = reference @ reference.T
    assert similarity[~np.eye(len(DOCUMENTS), dtype=bool)].max() < 0.99


@pytest.mark.parametrize("dimensions", [64, 256, None])
def test_queries_with_the_default_instruction_match_the_card(url: str, mrl_model_dir: Path,
                                                              dimensions: int | None) -> None:
    reference = card_embeddings(mrl_model_dir, [get_detailed_instruct(TASK, q) for q in QUERIES])
    if dimensions:
        reference = mrl(reference, dimensions)
    close(openai(url, {"input": QUERIES, "input_type": "query", "dimensions": dimensions}), reference)


def test_queries_with_their_own_instruction_match_the_card(url: str, mrl_model_dir: Path) -> None:
    reference = card_embeddings(mrl_model_dir, [get_detailed_instruct(CODE_TASK, q) for q in QUERIES])
    close(openai(url, {"input": QUERIES, "instruction": CODE_TASK}), reference)
    default = card_embeddings(mrl_model_dir, [get_detailed_instruct(TASK, q) for q in QUERIES])
    assert np.abs(reference - default).max() > 1e-3  # the instruction matters


def test_a_truncated_input_matches_the_card_and_is_billed_as_cut(url: str, mrl_model_dir: Path) -> None:
    long_text = DOCUMENTS[3]
    reference = card_embeddings(mrl_model_dir, [long_text])
    answer = httpx.post(f"{url}/v1/embeddings", json={"input": long_text}, timeout=60).json()
    close(np.array([answer["data"][0]["embedding"]], dtype=np.float32), reference)
    assert answer["usage"]["prompt_tokens"] == MAX_LEN


def test_every_dialect_gives_the_same_vectors(url: str, mrl_model_dir: Path) -> None:
    queries = card_embeddings(mrl_model_dir, [get_detailed_instruct(TASK, q) for q in QUERIES])
    docs = card_embeddings(mrl_model_dir, DOCUMENTS)
    tei = httpx.post(f"{url}/embed", json={"inputs": QUERIES, "prompt_name": "query"}, timeout=60)
    close(np.array(tei.json(), dtype=np.float32), queries)
    cohere = httpx.post(f"{url}/v2/embed", json={"texts": DOCUMENTS, "input_type": "search_document",
                                                 "embedding_types": ["float"]}, timeout=60)
    close(np.array(cohere.json()["embeddings"]["float"], dtype=np.float32), docs)
    jina = openai(url, {"input": QUERIES, "task": "retrieval.query"})
    close(jina, queries)
    b64 = httpx.post(f"{url}/v1/embeddings", json={"input": DOCUMENTS, "encoding_format": "base64"}, timeout=60)
    decoded = np.stack([np.frombuffer(base64.b64decode(d["embedding"]), dtype="<f4") for d in b64.json()["data"]])
    close(decoded, docs)


def test_token_id_inputs_embed_as_their_text(url: str, mrl_model_dir: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(mrl_model_dir)
    ids = [tokenizer.encode(d, add_special_tokens=False) for d in DOCUMENTS[:3]]
    close(openai(url, {"input": ids}), card_embeddings(mrl_model_dir, DOCUMENTS[:3]))
    close(openai(url, {"input": ids[0]}), card_embeddings(mrl_model_dir, DOCUMENTS[:1]))
