"""LlamaIndex's node postprocessors against ``rerankd up``: ``CohereRerank``, ``JinaRerank`` and the TEI reranker
``TextEmbeddingInference`` (llama-index-postprocessor-tei-rerank).

What each sends: ``CohereRerank`` a ``cohere.ClientV2`` call to ``{base_url}/v2/rerank`` with model
``rerank-english-v3.0``; ``JinaRerank`` ``POST {base_url}/rerank`` (base ``…/v1``) with model
``jina-reranker-v1-base-en``, reading ``detail`` from an error body; ``TextEmbeddingInference`` TEI's
``POST {base_url}/rerank`` with ``{"query", "texts"}``, its ``auth_token`` sent as the whole ``Authorization``
header (so ``"Bearer rk-…"``), and it reads the bare ``[{"index", "score"}]`` array back without looking at the
status: an error body becomes a Python error that does not carry the server's message.
"""

from __future__ import annotations

import cohere
import pytest
from llama_index.core.schema import NodeWithScore, QueryBundle, TextNode
from llama_index.postprocessor.cohere_rerank import CohereRerank
from llama_index.postprocessor.jinaai_rerank import JinaRerank
from llama_index.postprocessor.tei_rerank import TextEmbeddingInference

from clients.common import DOCUMENTS, QUERY, RATE_LIMITED, WRONG_KEY, Stack, assert_scores, gateway_message


def nodes() -> list[NodeWithScore]:
    return [NodeWithScore(node=TextNode(text=text, id_=f"node-{i}"), score=0.0) for i, text in enumerate(DOCUMENTS)]


def assert_reranked(stack: Stack, found: list[NodeWithScore], count: int) -> None:
    texts = {f"node-{i}": text for i, text in enumerate(DOCUMENTS)}
    assert all(n.node.get_content() == texts[n.node.node_id] for n in found)  # each node kept whole
    assert_scores(stack, [(n.node.get_content(), n.score) for n in found], count)


def test_cohere_rerank_reranks_nodes(stack: Stack) -> None:
    reranker = CohereRerank(api_key=stack.api_key, base_url=stack.gateway, top_n=3)  # model rerank-english-v3.0
    assert_reranked(stack, reranker.postprocess_nodes(nodes(), query_bundle=QueryBundle(QUERY)), 3)


def test_cohere_rerank_with_a_wrong_key_shows_the_gateways_message(stack: Stack) -> None:
    reranker = CohereRerank(api_key=WRONG_KEY, base_url=stack.gateway)
    with pytest.raises(cohere.UnauthorizedError) as caught:
        reranker.postprocess_nodes(nodes(), query_bundle=QueryBundle(QUERY))
    assert gateway_message(stack, WRONG_KEY) in str(caught.value)


def test_jina_rerank_reranks_nodes(stack: Stack) -> None:
    reranker = JinaRerank(api_key=stack.api_key, base_url=f"{stack.gateway}/v1", top_n=3)
    assert_reranked(stack, reranker.postprocess_nodes(nodes(), query_bundle=QueryBundle(QUERY)), 3)


def test_jina_rerank_with_a_wrong_key_shows_the_gateways_message(stack: Stack) -> None:
    reranker = JinaRerank(api_key=WRONG_KEY, base_url=f"{stack.gateway}/v1")
    with pytest.raises(RuntimeError) as caught:  # JinaRerank raises RuntimeError(body["detail"])
        reranker.postprocess_nodes(nodes(), query_bundle=QueryBundle(QUERY))
    assert gateway_message(stack, WRONG_KEY) in str(caught.value)


def test_jina_rerank_rate_limited_shows_the_gateways_message(stack: Stack, limited_key: str) -> None:
    reranker = JinaRerank(api_key=limited_key, base_url=f"{stack.gateway}/v1")
    with pytest.raises(RuntimeError) as caught:
        reranker.postprocess_nodes(nodes(), query_bundle=QueryBundle(QUERY))
    assert RATE_LIMITED in str(caught.value)


def test_tei_rerank_reranks_nodes(stack: Stack) -> None:
    reranker = TextEmbeddingInference(base_url=stack.gateway, auth_token=f"Bearer {stack.api_key}", top_n=3)
    assert_reranked(stack, reranker.postprocess_nodes(nodes(), query_bundle=QueryBundle(QUERY)), 3)


def test_tei_rerank_with_a_wrong_key_fails_instead_of_ranking(stack: Stack) -> None:
    """The library ignores the HTTP status: it fails on the error body's shape, and the message is lost."""
    reranker = TextEmbeddingInference(base_url=stack.gateway, auth_token=f"Bearer {WRONG_KEY}")
    with pytest.raises((AssertionError, TypeError, KeyError)):
        reranker.postprocess_nodes(nodes(), query_bundle=QueryBundle(QUERY))
