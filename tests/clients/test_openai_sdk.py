"""The OpenAI SDK against ``rerankd up``: ``models.list()`` is ``GET {base_url}/models``, ``models.retrieve(id)``
``GET {base_url}/models/{id}`` and ``embeddings.create`` ``POST {base_url}/embeddings`` (``base_url`` = the gateway
+ ``/v1``), with ``Authorization: Bearer KEY``. The SDK reads an error body's ``error`` object and puts the body in
its message. ``embeddings.create`` asks for ``encoding_format: base64`` unless told otherwise and decodes the
little-endian float32 bytes itself, so both encodings are checked against the gateway's float answer."""

from __future__ import annotations

import struct
from base64 import b64decode

import openai
import pytest

from clients.common import (
    EMBED_DIMENSIONS,
    OUT_OF_RANGE,
    TEXTS,
    WRONG_KEY,
    Stack,
    api_vectors,
    assert_vectors,
    gateway_message,
)


def client(stack: Stack, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{stack.gateway}/v1", api_key=key)


def test_models_list_names_the_served_model(stack: Stack) -> None:
    models = list(client(stack, stack.api_key).models.list())
    assert stack.model in [m.id for m in models]
    assert all(m.object == "model" for m in models)


def test_models_retrieve_answers_for_each_listed_model(stack: Stack) -> None:
    openai_client = client(stack, stack.api_key)
    for listed in openai_client.models.list():
        model = openai_client.models.retrieve(listed.id)
        assert model.id == listed.id
        assert model.object == "model"
        assert model.owned_by == listed.owned_by


def test_a_wrong_key_shows_the_gateways_message(stack: Stack) -> None:
    with pytest.raises(openai.AuthenticationError) as caught:
        client(stack, WRONG_KEY).models.list()
    assert caught.value.status_code == 401
    assert gateway_message(stack, WRONG_KEY) in caught.value.message


def test_models_list_names_both_models_of_the_stack(stack: Stack) -> None:
    ids = [m.id for m in client(stack, stack.api_key).models.list()]
    assert stack.model in ids and stack.embed_model in ids


@pytest.mark.parametrize("encoding", [None, "float", "base64"])
def test_embeddings_of_a_list_are_the_gateways_in_order(stack: Stack, encoding: str | None) -> None:
    """The SDK's default (it asks for base64 and decodes it), explicit floats, and explicit base64 (handed back
    undecoded: little-endian float32 bytes) give the same numbers."""
    options = {} if encoding is None else {"encoding_format": encoding}
    answer = client(stack, stack.api_key).embeddings.create(model=stack.embed_model, input=TEXTS,
                                                             **options)  # type: ignore[call-overload]
    assert [d.index for d in answer.data] == list(range(len(TEXTS)))
    got = [d.embedding for d in answer.data]
    if encoding == "base64":
        got = [list(struct.unpack(f"<{len(b64decode(v)) // 4}f", b64decode(v))) for v in got]
    assert_vectors(got, api_vectors(stack, TEXTS), EMBED_DIMENSIONS)
    assert answer.model == stack.embed_model
    assert answer.usage.prompt_tokens > len(TEXTS)  # every text's tokens, billed


def test_embedding_of_a_string_with_dimensions(stack: Stack) -> None:
    answer = client(stack, stack.api_key).embeddings.create(model=stack.embed_model, input=TEXTS[0], dimensions=32)
    assert len(answer.data) == 1
    assert_vectors([answer.data[0].embedding], api_vectors(stack, TEXTS[0], dimensions=32), 32)
    full = api_vectors(stack, TEXTS[0])[0]
    assert answer.data[0].embedding != full[:32]  # truncated *and* re-normalised


@pytest.mark.parametrize("dimensions", [8, 65])
def test_dimensions_out_of_range_is_a_422_naming_the_range(stack: Stack, dimensions: int) -> None:
    with pytest.raises(openai.UnprocessableEntityError) as caught:
        client(stack, stack.api_key).embeddings.create(model=stack.embed_model, input=TEXTS, dimensions=dimensions)
    assert caught.value.status_code == 422
    assert OUT_OF_RANGE in caught.value.message and str(dimensions) in caught.value.message


def test_embeddings_with_a_wrong_key_show_the_gateways_message(stack: Stack) -> None:
    with pytest.raises(openai.AuthenticationError) as caught:
        client(stack, WRONG_KEY).embeddings.create(model=stack.embed_model, input=TEXTS)
    assert gateway_message(stack, WRONG_KEY) in caught.value.message
