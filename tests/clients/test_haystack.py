"""Haystack's rankers against ``rerankd up``: ``CohereRanker`` (cohere-haystack) and ``JinaRanker``
(jina-haystack), in a Haystack ``Pipeline`` as users run them.

``CohereRanker`` takes ``api_base_url`` (its ``cohere.ClientV2`` posts to ``{api_base_url}/v2/rerank``, model
``rerank-v3.5``, ``max_tokens_per_doc`` 4096). ``JinaRanker``'s ``base_url`` is the whole endpoint
(``…/v1/rerank``), model ``jina-reranker-v1-base-en``; it reads ``detail`` from an error body.
"""

from __future__ import annotations

import cohere
import pytest
from haystack import Document, Pipeline
from haystack.utils import Secret
from haystack_integrations.components.rankers.cohere import CohereRanker
from haystack_integrations.components.rankers.jina import JinaRanker

from clients.common import DOCUMENTS, QUERY, RATE_LIMITED, WRONG_KEY, Stack, assert_scores, gateway_message


def documents() -> list[Document]:
    return [Document(content=text, meta={"source": i}) for i, text in enumerate(DOCUMENTS)]


def ranked_in_a_pipeline(ranker: object) -> list[Document]:
    pipeline = Pipeline()
    pipeline.add_component("ranker", ranker)
    return list(pipeline.run({"ranker": {"query": QUERY, "documents": documents()}})["ranker"]["documents"])


def assert_ranked(stack: Stack, found: list[Document], count: int) -> None:
    assert all(d.content == DOCUMENTS[d.meta["source"]] for d in found)  # each document kept whole
    assert_scores(stack, [(d.content or "", d.score) for d in found], count)


def test_cohere_ranker_ranks_in_a_pipeline(stack: Stack) -> None:
    ranker = CohereRanker(api_key=Secret.from_token(stack.api_key), api_base_url=stack.gateway, top_k=3)
    assert_ranked(stack, ranked_in_a_pipeline(ranker), 3)


def test_cohere_ranker_with_a_wrong_key_shows_the_gateways_message(stack: Stack) -> None:
    ranker = CohereRanker(api_key=Secret.from_token(WRONG_KEY), api_base_url=stack.gateway)
    with pytest.raises(cohere.UnauthorizedError) as caught:
        ranker.run(query=QUERY, documents=documents())
    assert gateway_message(stack, WRONG_KEY) in str(caught.value)


def test_jina_ranker_ranks_in_a_pipeline(stack: Stack) -> None:
    ranker = JinaRanker(api_key=Secret.from_token(stack.api_key), base_url=f"{stack.gateway}/v1/rerank", top_k=3)
    assert_ranked(stack, ranked_in_a_pipeline(ranker), 3)


def test_jina_ranker_with_a_wrong_key_shows_the_gateways_message(stack: Stack) -> None:
    ranker = JinaRanker(api_key=Secret.from_token(WRONG_KEY), base_url=f"{stack.gateway}/v1/rerank")
    with pytest.raises(RuntimeError) as caught:  # JinaRanker raises RuntimeError(body["detail"])
        ranker.run(query=QUERY, documents=documents())
    assert gateway_message(stack, WRONG_KEY) in str(caught.value)


def test_jina_ranker_rate_limited_shows_the_gateways_message(stack: Stack, limited_key: str) -> None:
    ranker = JinaRanker(api_key=Secret.from_token(limited_key), base_url=f"{stack.gateway}/v1/rerank")
    with pytest.raises(RuntimeError) as caught:
        ranker.run(query=QUERY, documents=documents())
    assert RATE_LIMITED in str(caught.value)
