"""Cohere's Python SDK (v1 ``Client`` and v2 ``ClientV2``) against ``rerankd up``: only ``base_url`` and the key
change. The SDK posts to ``{base_url}/v1/rerank`` and ``{base_url}/v2/rerank`` with ``Authorization: Bearer KEY``
and sends the vendor's model names (``rerank-english-v3.0``, ``rerank-v3.5``) that users leave in their code."""

from __future__ import annotations

import os

import cohere
import pytest

from clients.common import DOCUMENTS, QUERY, RATE_LIMITED, WRONG_KEY, Stack, assert_scores, gateway_message


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


def test_the_sdk_under_test_is_the_expected_one() -> None:
    """5.x in .venv-clients itself; 7.x when test_cohere7.py runs this file with ``.venv-clients/cohere7``."""
    major = os.environ.get("RERANKD_CLIENTS_COHERE_MAJOR", "5")
    assert cohere.__version__.split(".")[0] == major, cohere.__version__
