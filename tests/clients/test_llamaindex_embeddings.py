"""LlamaIndex's embedding for OpenAI-compatible servers against ``rerankd up``: ``OpenAILikeEmbedding``
(llama-index-embeddings-openai-like), which is ``OpenAIEmbedding`` without its check that the model is one of
OpenAI's. It calls the OpenAI SDK's ``embeddings.create`` on ``api_base`` (the gateway + ``/v1``) with the texts,
queries and documents alike as plain inputs (rerankd's document side), ``dimensions`` when given.
"""

from __future__ import annotations

import openai
import pytest
from llama_index.embeddings.openai_like import OpenAILikeEmbedding

from clients.common import EMBED_DIMENSIONS, OUT_OF_RANGE, TEXTS, WRONG_KEY, Stack, api_vectors, assert_vectors


def embedding(stack: Stack, key: str, **options: object) -> OpenAILikeEmbedding:
    return OpenAILikeEmbedding(model_name=stack.embed_model, api_base=f"{stack.gateway}/v1", api_key=key,
                               max_retries=0, **options)


def test_text_batch_and_query_embeddings_are_the_gateways(stack: Stack) -> None:
    model = embedding(stack, stack.api_key)
    assert_vectors(model.get_text_embedding_batch(TEXTS), api_vectors(stack, TEXTS), EMBED_DIMENSIONS)
    assert_vectors([model.get_query_embedding(TEXTS[1])], api_vectors(stack, TEXTS[1:2]), EMBED_DIMENSIONS)


def test_dimensions_are_honoured(stack: Stack) -> None:
    model = embedding(stack, stack.api_key, dimensions=32)
    assert_vectors([model.get_text_embedding(TEXTS[2])], api_vectors(stack, TEXTS[2:], dimensions=32), 32)


def test_dimensions_out_of_range_is_the_gateways_422(stack: Stack) -> None:
    with pytest.raises(openai.UnprocessableEntityError) as caught:
        embedding(stack, stack.api_key, dimensions=100).get_text_embedding(TEXTS[0])
    assert OUT_OF_RANGE in caught.value.message


def test_a_wrong_key_is_the_gateways_401(stack: Stack) -> None:
    with pytest.raises(openai.AuthenticationError) as caught:
        embedding(stack, WRONG_KEY).get_text_embedding(TEXTS[0])
    assert "invalid or revoked API key" in caught.value.message
