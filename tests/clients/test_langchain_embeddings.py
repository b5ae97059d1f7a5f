"""LangChain's embeddings against ``rerankd up``: ``OpenAIEmbeddings`` (langchain-openai) and ``CohereEmbeddings``
(langchain-cohere), through the gateway with the stack's one key.

``OpenAIEmbeddings`` by default cuts texts into OpenAI's tiktoken tokens and sends *token ids* of that vocabulary
(and tiktoken fetches its vocabulary file on first use): ``check_embedding_ctx_length=False`` makes it send the text,
as every OpenAI-compatible server that is not OpenAI needs. It then calls the OpenAI SDK's ``embeddings.create``
(``POST {base_url}/embeddings``), texts and queries alike as plain inputs (rerankd's document side).

``CohereEmbeddings`` builds Cohere's v1 ``cohere.Client`` and posts to ``{base_url}/v1/embed``, Cohere's v1 embed
route, with ``embedding_types: ["float"]`` (an ``embeddings_by_type`` answer): documents as ``search_document``, the
query as ``search_query``, which rerankd embeds as its document and query sides, as ``/v1/embeddings`` does.
"""

from __future__ import annotations

import pytest
from langchain_cohere import CohereEmbeddings
from langchain_openai import OpenAIEmbeddings

from clients.common import EMBED_DIMENSIONS, OUT_OF_RANGE, TEXTS, WRONG_KEY, Stack, api_vectors, assert_vectors


def openai_embeddings(stack: Stack, key: str, **options: object) -> OpenAIEmbeddings:
    return OpenAIEmbeddings(model=stack.embed_model, base_url=f"{stack.gateway}/v1", api_key=key,  # type: ignore[arg-type]
                            check_embedding_ctx_length=False, max_retries=0, **options)


def test_openai_embeddings_documents_and_query_are_the_gateways(stack: Stack) -> None:
    embeddings = openai_embeddings(stack, stack.api_key)
    assert_vectors(embeddings.embed_documents(TEXTS), api_vectors(stack, TEXTS), EMBED_DIMENSIONS)
    assert_vectors([embeddings.embed_query(TEXTS[0])], api_vectors(stack, TEXTS[:1]), EMBED_DIMENSIONS)


def test_openai_embeddings_honour_dimensions(stack: Stack) -> None:
    embeddings = openai_embeddings(stack, stack.api_key, dimensions=48)
    assert_vectors(embeddings.embed_documents(TEXTS), api_vectors(stack, TEXTS, dimensions=48), 48)


def test_openai_embeddings_dimensions_out_of_range_shows_the_range(stack: Stack) -> None:
    import openai

    with pytest.raises(openai.UnprocessableEntityError) as caught:
        openai_embeddings(stack, stack.api_key, dimensions=16).embed_documents(TEXTS)
    assert caught.value.status_code == 422 and OUT_OF_RANGE in caught.value.message


def test_openai_embeddings_with_a_wrong_key_fail_with_401(stack: Stack) -> None:
    import openai

    with pytest.raises(openai.AuthenticationError) as caught:
        openai_embeddings(stack, WRONG_KEY).embed_documents(TEXTS)
    assert "invalid or revoked API key" in caught.value.message


def test_cohere_embeddings_documents_and_query_are_the_gateways(stack: Stack) -> None:
    embeddings = CohereEmbeddings(model="embed-english-v3.0", cohere_api_key=stack.api_key,  # type: ignore[arg-type]
                                  base_url=stack.gateway, max_retries=0)
    assert_vectors(embeddings.embed_documents(TEXTS), api_vectors(stack, TEXTS, input_type="document"),
                   EMBED_DIMENSIONS)
    assert_vectors([embeddings.embed_query(TEXTS[0])], api_vectors(stack, TEXTS[:1], input_type="query"),
                   EMBED_DIMENSIONS)


def test_cohere_embeddings_with_a_wrong_key_fail_with_401(stack: Stack) -> None:
    import cohere

    embeddings = CohereEmbeddings(model="embed-english-v3.0", cohere_api_key=WRONG_KEY,  # type: ignore[arg-type]
                                  base_url=stack.gateway, max_retries=0)
    with pytest.raises(cohere.UnauthorizedError) as caught:
        embeddings.embed_documents(TEXTS)
    assert "invalid or revoked API key" in str(caught.value)
