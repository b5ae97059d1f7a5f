"""The admission parser: the JSON it returns is json.loads', and it stops at its budgets without reading on."""

from __future__ import annotations

import json

import pytest

from rerankd.errors import BadRequestError, PayloadTooLargeError
from rerankd.server.admission import AdmissionLimits, check_texts, parse_bounded

LIMITS = AdmissionLimits(max_documents=1000, max_request_chars=1000)


@pytest.mark.parametrize("body", [
    {"query": "q", "documents": ["a", {"text": "b", "id": 3, "meta": {"x": [1.5, -2e3, None, True, False]}}]},
    {"query": "é \u2603 \ud83d\ude00 \"quoted\" \\ \n\t", "texts": ["x"] * 1000, "truncate": False},
    {"text_1": ["q1", "q2"], "text_2": ["d1", "d2"], "truncate_prompt_tokens": 10},
    [1, 2, 3], "str", None, 0,
])
def test_what_it_parses_is_what_json_loads_parses(body: object) -> None:
    raw = json.dumps(body).encode()
    assert parse_bounded(raw, LIMITS) == json.loads(raw)
    assert parse_bounded(json.dumps(body).encode("utf-16"), LIMITS) == json.loads(raw)  # the encoding is detected


def test_a_long_document_list_is_refused_after_one_item_too_many() -> None:
    # Broken JSON after the 1001st item: a parser that read on would answer "not JSON" instead.
    raw = b'{"query": "q", "documents": [' + b"{}," * 1001 + b"not json" * 100_000
    with pytest.raises(PayloadTooLargeError, match="limit of 1000 \\(--max-documents\\)") as refused:
        parse_bounded(raw, LIMITS)
    assert refused.value.field == "documents"
    with pytest.raises(PayloadTooLargeError):
        parse_bounded(json.dumps({"query": "q", "texts": [{}] * 200_000}).encode(), LIMITS)
    parse_bounded(json.dumps({"query": "q", "documents": [{}] * 1000}).encode(), LIMITS)  # the limit itself is in


def test_values_and_depth_are_bounded_anywhere_in_the_body() -> None:
    many = {"query": "q", "documents": [{"text": "a", "meta": [0] * 100}] * 200}
    with pytest.raises(PayloadTooLargeError, match="JSON values"):
        parse_bounded(json.dumps(many).encode(), LIMITS)
    with pytest.raises(BadRequestError, match="nested more than 32"):
        parse_bounded(b'{"documents": ' + b"[" * 40 + b"]" * 40 + b"}", LIMITS)
    with pytest.raises(json.JSONDecodeError):
        parse_bounded(b'{"documents": [1,', LIMITS)


def test_characters_are_summed_over_what_is_tokenized_and_the_biggest_field_named() -> None:
    check_texts({"query": "q" * 400, "documents": ["d" * 300, {"text": "d" * 300}], "model": "m" * 5000}, LIMITS)
    with pytest.raises(PayloadTooLargeError, match="--max-request-chars") as refused:
        check_texts({"query": "q" * 400, "documents": ["d" * 300, {"text": "d" * 301}]}, LIMITS)
    assert refused.value.field == "documents"  # 601 characters against the query's 400
    check_texts(["not", "an", "object"], LIMITS)  # the wrong shape is pydantic's to name
