"""LangChain against ``rerankd up``: ``CohereRerank`` (langchain-cohere) as the compressor of a
``ContextualCompressionRetriever``, and ``JinaRerank`` (langchain-community).

``CohereRerank`` takes ``base_url`` (its ``cohere.ClientV2`` posts to ``{base_url}/v2/rerank``) and needs a
``model``: users keep Cohere's ``rerank-v3.5``. ``JinaRerank`` has no URL parameter at all: it posts to the module
constant ``JINA_API_URL``, so pointing it at rerankd means patching that constant; it reads Jina's top-level
``detail`` field of an error body for its message.
"""

from __future__ import annotations

from collections.abc import Iterator

import cohere
import pytest
from langchain_classic.retrievers import ContextualCompressionRetriever
from langchain_cohere import CohereRerank
from langchain_community.document_compressors import jina_rerank
from langchain_community.document_compressors.jina_rerank import JinaRerank
from langchain_core.callbacks import CallbackManagerForRetrieverRun
from langchain_core.documents import Document
from langchain_core.retrievers import BaseRetriever

from clients.common import DOCUMENTS, QUERY, RATE_LIMITED, WRONG_KEY, Stack, assert_scores, gateway_message


class FirstStage(BaseRetriever):
    """A first-stage retriever that returns every document (the reranker is what is under test)."""

    documents: list[Document]

    def _get_relevant_documents(self, query: str, *, run_manager: CallbackManagerForRetrieverRun) -> list[Document]:
        return list(self.documents)


def first_stage() -> FirstStage:
    return FirstStage(documents=[Document(page_content=text, metadata={"source": i})
                                 for i, text in enumerate(DOCUMENTS)])


@pytest.fixture
def jina_at_rerankd(stack: Stack, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """What a user must do for ``JinaRerank``: point its module constant at the gateway."""
    monkeypatch.setattr(jina_rerank, "JINA_API_URL", f"{stack.gateway}/v1/rerank")
    yield


def test_cohere_rerank_compresses_in_a_contextual_compression_retriever(stack: Stack) -> None:
    compressor = CohereRerank(model="rerank-v3.5", cohere_api_key=stack.api_key, base_url=stack.gateway, top_n=2)
    retriever = ContextualCompressionRetriever(base_compressor=compressor, base_retriever=first_stage())
    found = retriever.invoke(QUERY)
    assert_scores(stack, [(d.page_content, d.metadata["relevance_score"]) for d in found], 2)
    assert all(d.page_content == DOCUMENTS[d.metadata["source"]] for d in found)  # metadata kept with its text


def test_cohere_rerank_with_a_wrong_key_shows_the_gateways_message(stack: Stack) -> None:
    compressor = CohereRerank(model="rerank-v3.5", cohere_api_key=WRONG_KEY, base_url=stack.gateway)
    with pytest.raises(cohere.UnauthorizedError) as caught:
        compressor.compress_documents(first_stage().documents, QUERY)
    assert gateway_message(stack, WRONG_KEY) in str(caught.value)


@pytest.mark.usefixtures("jina_at_rerankd")
def test_jina_rerank_reranks_with_its_default_model_name(stack: Stack) -> None:
    reranker = JinaRerank(jina_api_key=stack.api_key, top_n=3)  # model: jina-reranker-v1-base-en
    found = reranker.compress_documents(first_stage().documents, QUERY)
    assert_scores(stack, [(d.page_content, d.metadata["relevance_score"]) for d in found], 3)
    assert all(d.page_content == DOCUMENTS[d.metadata["source"]] for d in found)


@pytest.mark.usefixtures("jina_at_rerankd")
def test_jina_rerank_with_a_wrong_key_shows_the_gateways_message(stack: Stack) -> None:
    reranker = JinaRerank(jina_api_key=WRONG_KEY)
    with pytest.raises(RuntimeError) as caught:  # JinaRerank raises RuntimeError(body["detail"])
        reranker.rerank(DOCUMENTS, QUERY)
    assert gateway_message(stack, WRONG_KEY) in str(caught.value)


@pytest.mark.usefixtures("jina_at_rerankd")
def test_jina_rerank_rate_limited_shows_the_gateways_message(limited_key: str) -> None:
    reranker = JinaRerank(jina_api_key=limited_key)
    with pytest.raises(RuntimeError) as caught:
        reranker.rerank(DOCUMENTS, QUERY)
    assert RATE_LIMITED in str(caught.value)
