"""Cohere's Python SDK (v1 ``Client`` and v2 ``ClientV2``) against ``rerankd up``: only ``base_url`` and the key
change. The SDK posts to ``{base_url}/v1/rerank`` and ``{base_url}/v2/rerank`` with ``Authorization: Bearer KEY``
and sends the vendor's model names (``rerank-english-v3.0``, ``rerank-v3.5``) that users leave in their code.
``ClientV2.embed`` posts to ``{base_url}/v2/embed`` (``input_type``, ``embedding_types``, ``output_dimension``)."""

from __future__ import annotations

import os

import cohere
import httpx
import pytest

from clients.common import (
    DOCUMENTS,
    EMBED_DIMENSIONS,
    OUT_OF_RANGE,
    QUERY,
    RATE_LIMITED,
    TEXTS,
    WRONG_KEY,
    Stack,
    api_vectors,
    assert_scores,
    assert_vectors,
    gateway_message,
)


def test_v2_client_reranks_with_the_vendor_model_name(stack: Stack) -> None:
    co = cohere.ClientV2(api_key=stack.api_key, base_url=stack.gateway)
    answer = co.rerank(model="rerank-v3.5", query=QUERY, documents=DOCUMENTS, top_n=3)
    assert_scores(stack, [(DOCUMENTS[r.index], r.relevance_score) for r in answer.results], 3)


def test_v1_client_reranks_and_returns_documents(stack: Stack) -> None:
    co = cohere.Client(api_key=stack.api_key, base_url=stack.gateway)
    answer = co.rerank(model="rerank-english-v3.0", query=QUERY, documents=DOCUMENTS, return_documents=True)
    assert_scores(stack, [(DOCUMENTS[r.index], r.relevance_score) for r in answer.results], len(DOCUMENTS))
    for result in answer.results:
        assert result.document is not None
        assert result.document.text == DOCUMENTS[result.index]


def test_v1_client_ranks_object_documents_by_rank_fields(stack: Stack) -> None:
    """Cohere v1's structured documents: ``rank_fields`` picks the fields ranked; the object comes back whole."""
    documents = [{"title": "France", "text": DOCUMENTS[0], "id": "doc-0"},
                 {"title": "Fruit", "text": DOCUMENTS[3], "id": "doc-3"}]
    co = cohere.Client(api_key=stack.api_key, base_url=stack.gateway)
    answer = co.rerank(model="rerank-english-v3.0", query=QUERY, documents=documents,
                       rank_fields=["title", "text"], return_documents=True)
    assert sorted(r.index for r in answer.results) == [0, 1]
    for result in answer.results:
        assert result.document is not None
        sent = documents[result.index]
        assert result.document.text == sent["text"]
        assert (getattr(result.document, "title", None), getattr(result.document, "id", None)) == (
            sent["title"], sent["id"])  # the whole object, not just its text


def test_a_wrong_key_shows_the_gateways_message(stack: Stack) -> None:
    co = cohere.ClientV2(api_key=WRONG_KEY, base_url=stack.gateway)
    with pytest.raises(cohere.UnauthorizedError) as caught:
        co.rerank(model="rerank-v3.5", query=QUERY, documents=DOCUMENTS)
    assert caught.value.status_code == 401
    assert gateway_message(stack, WRONG_KEY) in str(caught.value)


def test_a_rate_limited_key_shows_the_gateways_message(stack: Stack, limited_key: str) -> None:
    """The SDK retries a 429 twice after ``Retry-After`` (here up to a minute); retries off shows it at once."""
    co = cohere.ClientV2(api_key=limited_key, base_url=stack.gateway)
    with pytest.raises(cohere.TooManyRequestsError) as caught:
        co.rerank(model="rerank-v3.5", query=QUERY, documents=DOCUMENTS, request_options={"max_retries": 0})
    assert caught.value.status_code == 429
    assert RATE_LIMITED in str(caught.value)


def _v2_embed(stack: Stack, **body: object) -> dict[str, list[list[float]]]:
    """The gateway's own /v2/embed answer's ``embeddings`` (by type), for the encodings the SDK must pass on."""
    answer = httpx.post(f"{stack.gateway}/v2/embed", json={"texts": TEXTS, **body}, timeout=30,
                        headers={"Authorization": f"Bearer {stack.api_key}"})
    assert answer.status_code == 200, answer.text
    return dict(answer.json()["embeddings"])


@pytest.mark.parametrize(("input_type", "side"), [("search_query", "query"), ("search_document", "document")])
def test_v2_embed_gives_the_gateways_vectors_by_type(stack: Stack, input_type: str, side: str) -> None:
    """float equals /v1/embeddings for the same side (query: the card's instruction); int8 and binary are the
    gateway's own /v2/embed quantisation, unchanged by the SDK."""
    co = cohere.ClientV2(api_key=stack.api_key, base_url=stack.gateway)
    answer = co.embed(model="embed-v4.0", texts=TEXTS, input_type=input_type,  # type: ignore[arg-type]
                      embedding_types=["float", "int8", "binary"])
    by_type = answer.embeddings
    assert by_type.float_ is not None and by_type.int8 is not None and by_type.binary is not None
    assert_vectors(by_type.float_, api_vectors(stack, TEXTS, input_type=side), EMBED_DIMENSIONS)
    own = _v2_embed(stack, input_type=input_type, embedding_types=["int8", "binary"])
    assert by_type.int8 == own["int8"] and by_type.binary == own["binary"]
    assert all(len(v) == EMBED_DIMENSIONS for v in by_type.int8)
    assert all(len(v) == EMBED_DIMENSIONS // 8 for v in by_type.binary)  # 8 components to a byte
    assert answer.meta is not None and answer.meta.billed_units is not None
    assert (answer.meta.billed_units.input_tokens or 0) > len(TEXTS)


def test_v2_embed_honours_output_dimension(stack: Stack) -> None:
    co = cohere.ClientV2(api_key=stack.api_key, base_url=stack.gateway)
    answer = co.embed(model="embed-v4.0", texts=TEXTS, input_type="search_document", embedding_types=["float"],
                      output_dimension=32)
    assert answer.embeddings.float_ is not None
    assert_vectors(answer.embeddings.float_, api_vectors(stack, TEXTS, input_type="document", dimensions=32), 32)


def test_v2_embed_output_dimension_out_of_range_is_a_422_naming_the_range(stack: Stack) -> None:
    co = cohere.ClientV2(api_key=stack.api_key, base_url=stack.gateway)
    with pytest.raises(cohere.UnprocessableEntityError) as caught:
        co.embed(model="embed-v4.0", texts=TEXTS, input_type="search_document", embedding_types=["float"],
                 output_dimension=4096)
    assert caught.value.status_code == 422
    assert OUT_OF_RANGE in str(caught.value) and "output_dimension" in str(caught.value)


def test_the_sdk_under_test_is_the_expected_one() -> None:
    """5.x in .venv-clients itself; 7.x when test_cohere7.py runs this file with ``.venv-clients/cohere7``."""
    major = os.environ.get("RERANKD_CLIENTS_COHERE_MAJOR", "5")
    assert cohere.__version__.split(".")[0] == major, cohere.__version__
