"""What the gateway changes in a body before a replica sees it: the model name and the priority."""

from __future__ import annotations

import json

import pytest

from rerankd.errors import UnprocessableError
from rerankd.gateway.upstream_body import DROP, BodyEdit, plan_edits


def body(**fields: object) -> bytes:
    return json.dumps({"query": "q", "documents": ["a"], **fields}).encode()


def sent(raw: bytes, edit: BodyEdit) -> dict[str, object]:
    return json.loads(edit.apply(raw))  # type: ignore[no-any-return]


def test_a_body_with_nothing_to_change_goes_on_byte_for_byte() -> None:
    raw = body(model="served")
    for whole, _ in (plan_edits(raw, "served", "served", False, None), plan_edits(raw, "x", None, True, None),
                     plan_edits(body(), None, None, False, None)):
        assert whole.empty and whole.apply(raw) is raw


def test_a_public_name_is_dropped_or_replaced_by_the_served_model() -> None:
    raw = body(model="rerank-v3.5")
    whole, parts = plan_edits(raw, "rerank-v3.5", None, False, None)
    assert whole.model is DROP and "model" not in sent(raw, whole)
    whole, parts = plan_edits(raw, "rerank-v3.5", "Qwen3-Reranker-4B", False, None)
    assert sent(raw, whole)["model"] == "Qwen3-Reranker-4B" and parts.model == "Qwen3-Reranker-4B"
    assert sent(raw, plan_edits(raw, "rerank-v3.5", None, True, None)[0])["model"] == "rerank-v3.5"  # --upstream


@pytest.mark.parametrize(("client", "key", "expected"), [
    (None, 5, 5),  # the key's default when the client sent none
    (9, 5, 9),  # a later (higher) value is the client's to ask
    (1, 5, 5),  # an earlier one is raised to the key's
    (-3, None, -3),  # no key priority: the client's own, untouched
    (None, None, None),
])
def test_the_priority_sent_is_the_clients_but_never_below_the_keys(client: int | None, key: int | None,
                                                                    expected: int | None) -> None:
    raw = body() if client is None else body(priority=client)
    whole, parts = plan_edits(raw, None, None, False, key)
    assert sent(raw, whole).get("priority") == expected
    assert parts.priority == expected  # a split's rebuilt parts always carry it
    if expected == client:
        assert whole.apply(raw) is raw


def test_a_priority_that_is_no_integer_is_a_422_when_the_key_has_one_else_the_replicas_call() -> None:
    for bad in ("high", 1.5, True, None):
        raw = body(priority=bad)
        if bad is None:
            continue
        with pytest.raises(UnprocessableError) as refused:
            plan_edits(raw, None, None, False, 3)
        assert refused.value.field == "priority" and "must be an integer" in refused.value.message
        whole, parts = plan_edits(raw, None, None, False, None)
        assert whole.apply(raw) is raw and parts.priority == bad


def test_the_word_priority_inside_a_document_is_not_a_priority() -> None:
    raw = json.dumps({"query": "q", "documents": ['"priority": 1']}).encode()
    whole, _ = plan_edits(raw, None, None, False, 4)
    assert sent(raw, whole)["priority"] == 4 and sent(raw, whole)["documents"] == ['"priority": 1']
