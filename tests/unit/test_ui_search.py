"""The search page's helpers: corpus limits, top-k by cosine, the corpus-vector cache, and the embedding client
against a real local HTTP server (batches halved on 413, queries marked as queries, failures worded)."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from rerankd.ui.embedder import EmbeddingAPIError, embeddings_url, vectors_from_answer
from rerankd.ui.search import (
    CorpusError,
    CorpusVectors,
    check_corpus,
    clamp_top_k,
    corpus_key,
    top_k_by_cosine,
)
from rerankd.ui.upstream import page_embedder
from support import serving_in_thread

# ------------------------------------------------------------------------------------------ corpus


def test_an_empty_or_too_large_corpus_is_refused_with_the_flag_to_change() -> None:
    with pytest.raises(CorpusError, match="at least one passage"):
        check_corpus([], 5)
    with pytest.raises(CorpusError, match=r"has 6 passages; this UI searches at most 5 \(`--max-corpus`\)"):
        check_corpus(["p"] * 6, 5)
    check_corpus(["p"] * 5, 5)


def test_top_k_is_clamped_to_the_corpus_and_the_page_limit() -> None:
    assert clamp_top_k(3, 10, 100) == 3
    assert clamp_top_k(30, 10, 100) == 10
    assert clamp_top_k(500, 1000, 100) == 100
    assert clamp_top_k(0, 10, 100) == 1
    assert clamp_top_k(None, 10, 100) == 1
    assert clamp_top_k(2.0, 10, 100) == 2


# ------------------------------------------------------------------------------------------ cosine


def test_top_k_ranks_by_cosine_not_by_dot_product() -> None:
    query = np.array([1.0, 0.0], dtype=np.float32)
    # Passage 0 has the largest dot product (long vector) but the smallest cosine.
    passages = np.array([[10.0, 10.0], [0.9, 0.1], [0.0, 1.0], [1.0, 0.0]], dtype=np.float32)
    hits = top_k_by_cosine(query, passages, 3)
    assert [h.index for h in hits] == [3, 1, 0]
    assert [h.rank for h in hits] == [1, 2, 3]
    assert hits[0].cosine == pytest.approx(1.0)
    assert hits[2].cosine == pytest.approx(np.sqrt(0.5))


def test_equal_cosines_keep_corpus_order_and_zero_vectors_count_as_zero() -> None:
    query = np.array([0.0, 2.0], dtype=np.float32)
    passages = np.array([[0.0, 0.0], [1.0, 1.0], [0.0, 3.0], [2.0, 2.0], [0.0, -1.0]], dtype=np.float32)
    hits = top_k_by_cosine(query, passages, 10)
    assert [h.index for h in hits] == [2, 1, 3, 0, 4]
    assert hits[3].cosine == 0.0 and hits[4].cosine == pytest.approx(-1.0)


def test_many_equal_cosines_still_keep_corpus_order() -> None:
    # Past 16 elements numpy's default sort is not stable: the ties would come back shuffled.
    passages = np.array([[1.0, 0.0]] * 20 + [[1.0, 1.0]] * 20 + [[1.0, 0.0]] * 20, dtype=np.float32)
    hits = top_k_by_cosine(np.array([1.0, 1.0], dtype=np.float32), passages, 25)
    assert [h.index for h in hits] == [*range(20, 40), *range(5)]


def test_mismatched_dimensions_are_an_error_not_a_ranking() -> None:
    with pytest.raises(ValueError, match="shape"):
        top_k_by_cosine(np.ones(3), np.ones((2, 4)), 1)


# ------------------------------------------------------------------------------------------- cache


def test_corpus_key_depends_on_the_model_and_every_passage_boundary() -> None:
    key = corpus_key("m", ["ab", "c"])
    assert key == corpus_key("m", ["ab", "c"])
    assert key != corpus_key("m", ["a", "bc"])
    assert key != corpus_key("m", ["c", "ab"])
    assert key != corpus_key("other", ["ab", "c"])


def test_corpus_vectors_drop_the_least_recently_used_past_the_vector_budget() -> None:
    cache = CorpusVectors(max_vectors=5)
    cache.put("a", np.zeros((2, 4)))
    cache.put("b", np.zeros((2, 4)))
    assert cache.get("a") is not None  # a is now the most recently used
    cache.put("c", np.zeros((2, 4)))  # 6 vectors: b goes
    assert cache.get("b") is None and cache.get("a") is not None and cache.get("c") is not None
    cache.put("huge", np.zeros((6, 4)))  # larger than the whole budget: not kept, nothing evicted
    assert cache.get("huge") is None and len(cache) == 2


# -------------------------------------------------------------------------------------- the client


def test_embeddings_url_follows_the_rerank_url_to_the_same_service() -> None:
    assert embeddings_url("http://gw:8080") == "http://gw:8080/v1/embeddings"
    assert embeddings_url("http://gw:8080/api/") == "http://gw:8080/api/v1/embeddings"
    assert embeddings_url("http://gw:8080/v1/rerank") == "http://gw:8080/v1/embeddings"
    assert embeddings_url("http://gw:8080/api/v2/rerank") == "http://gw:8080/api/v1/embeddings"
    assert embeddings_url("http://emb:9000/v1/embeddings/") == "http://emb:9000/v1/embeddings"
    with pytest.raises(ValueError, match="not an http"):
        embeddings_url("gw:8080")


def _b64(vector: list[float]) -> str:
    return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode()


def test_vectors_come_back_in_input_order_from_base64_or_floats() -> None:
    body = {"data": [{"index": 1, "embedding": _b64([0.0, 1.0])}, {"index": 0, "embedding": [1.0, 0.0]}],
            "model": "m", "usage": {"prompt_tokens": 7}}
    vectors, model, tokens = vectors_from_answer(body, 2)
    assert vectors.tolist() == [[1.0, 0.0], [0.0, 1.0]] and model == "m" and tokens == 7


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        ([{"embedding": [1.0]}], "1 vectors for 2 inputs"),
        ([{"embedding": [1.0]}, {"embedding": [1.0, 2.0]}], "dimensions"),
        ([{"index": 0, "embedding": [1.0]}, {"index": 0, "embedding": [1.0]}], "repeated"),
        ([{"embedding": "!!"}, {"embedding": [1.0]}], "base64"),
        ([{"embedding": {"x": 1}}, {"embedding": [1.0]}], "neither"),
    ],
)
def test_answers_that_are_not_two_vectors_are_refused(data: list[dict[str, Any]], problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        vectors_from_answer({"data": data}, 2)


def _embedding_service(seen: list[dict[str, Any]], max_inputs: int) -> Any:
    """An OpenAI-shaped ``/v1/embeddings`` that answers 413 past ``max_inputs`` inputs and records each body.

    Each text's vector is ``[len(text), 1]``, so the caller can check order across batches.
    """
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    async def embeddings(request: Request) -> JSONResponse:
        body = await request.json()
        seen.append(body)
        if body["input"][0] == "wrong task":
            return JSONResponse({"error": {"message": "this server serves a reranker", "type": "wrong_task"}}, 400)
        if len(body["input"]) > max_inputs:
            return JSONResponse({"error": {"message": f"at most {max_inputs} inputs"}}, 413)
        data = [{"index": i, "embedding": _b64([float(len(t)), 1.0])} for i, t in enumerate(body["input"])]
        return JSONResponse({"data": data, "model": "stub-embedder", "usage": {"prompt_tokens": len(data)}})

    return Starlette(routes=[Route("/v1/embeddings", embeddings, methods=["POST"])])


@pytest.fixture
def embedding_service() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    seen: list[dict[str, Any]] = []
    with serving_in_thread(_embedding_service(seen, max_inputs=3)) as url:
        yield url, seen


async def test_passages_are_sent_in_batches_halved_on_413_and_kept_in_order(
    embedding_service: tuple[str, list[dict[str, Any]]],
) -> None:
    url, seen = embedding_service
    client = page_embedder(url, api_key="emb-secret", model="emb-model")
    texts = ["a" * n for n in range(1, 11)]
    result = await client.embed(texts)
    assert result.vectors[:, 0].tolist() == [float(n) for n in range(1, 11)]
    assert result.model == "stub-embedder" and result.prompt_tokens == 10
    assert [len(b["input"]) for b in seen] == [10, 5, 2, 2, 2, 2, 2]  # 413 for 10 and 5, then 2 at a time
    assert all(b["model"] == "emb-model" and b["encoding_format"] == "base64" for b in seen)
    assert all("instruction" not in b and "input_type" not in b for b in seen)  # passages are documents
    assert "emb-secret" not in repr(client)


async def test_a_query_carries_its_instruction_or_asks_for_the_default(
    embedding_service: tuple[str, list[dict[str, Any]]],
) -> None:
    url, seen = embedding_service
    client = page_embedder(url)
    await client.embed(["q"], query=True, instruction="Find code")
    await client.embed(["q"], query=True)
    assert seen[0]["instruction"] == "Find code" and "input_type" not in seen[0]
    assert seen[1]["input_type"] == "query" and "instruction" not in seen[1]


async def test_a_reranker_behind_the_embedding_url_is_named_as_the_mistake(
    embedding_service: tuple[str, list[dict[str, Any]]],
) -> None:
    url, _ = embedding_service
    with pytest.raises(EmbeddingAPIError) as caught:
        await page_embedder(url).embed(["wrong task"])
    assert caught.value.title == "Embedding failed (HTTP 400)"
    assert "serves a reranker, not an embedding model" in caught.value.message
    assert "`--embedding-url`" in caught.value.message


async def test_a_missing_embedder_names_the_embedding_flags() -> None:
    from support import free_port

    with pytest.raises(EmbeddingAPIError, match=r"Cannot reach the embedding service at .*`--embedding-url`"):
        await page_embedder(f"http://127.0.0.1:{free_port()}", timeout=5).embed(["p"])


def test_the_embedders_status_sentences_name_its_own_flags() -> None:
    from rerankd.ui.upstream import describe_status

    unauthorized = describe_status(401, "", None, "http://e/v1/embeddings", key_option="--embedding-api-key")
    assert "`--embedding-api-key` (or RERANKD_EMBEDDING_API_KEY)" in unauthorized
    missing = describe_status(404, "", None, "http://e/v1/embeddings", url_option="--embedding-url",
                              serves="an embedding model")
    assert "Check `--embedding-url`: it should point at an embedding model." in missing
