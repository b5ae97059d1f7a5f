"""The OpenAI SDK's model routes against ``rerankd up``: ``models.list()`` is ``GET {base_url}/models`` and
``models.retrieve(id)`` is ``GET {base_url}/models/{id}`` (``base_url`` = the gateway + ``/v1``), with
``Authorization: Bearer KEY``. The SDK reads an error body's ``error`` object and puts the body in its message."""

from __future__ import annotations

import openai
import pytest

from clients.common import WRONG_KEY, Stack, gateway_message


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
