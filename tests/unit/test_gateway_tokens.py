"""The replica's token count is charged only when it is a plausible count: 0 <= n < 2**31, an integer."""

from __future__ import annotations

import json

import pytest

from rerankd.errors import UpstreamMalformedError
from rerankd.gateway.tokens import MAX_TOKENS, parse_token_header, reported_tokens, usage_count, usage_tokens


@pytest.mark.parametrize(("header", "expected"), [("0", 0), ("17", 17), (" 42 ", 42), ("2147483647", 2**31 - 1)])
def test_a_plain_count_in_the_header_is_taken(header: str, expected: int) -> None:
    assert parse_token_header(header) == expected


@pytest.mark.parametrize("header", [
    "-5", "+5", "", "1e3", "12.0", "0x10", "2147483648", "9" * 11, "9" * 4000, "1" * 5000, "١٢",  # Arabic digits
    "12 tokens", "nan",
])
def test_anything_else_in_the_header_is_a_malformed_answer(header: str) -> None:
    with pytest.raises(UpstreamMalformedError) as caught:
        parse_token_header(header)
    assert caught.value.status_code == 502 and caught.value.error_type == "upstream_malformed"
    assert len(caught.value.message) < 200  # a 4,000-digit value is not echoed back in full


@pytest.mark.parametrize(("answer", "expected"), [
    ({"usage": {"prompt_tokens": 12, "total_tokens": 12}}, 12),
    ({"usage": {"total_tokens": 9}}, 9),  # plain vLLM reports only the total
    ({"usage": {"prompt_tokens": 0, "total_tokens": 5}}, 5),
    ({"usage": None}, 0),
    ({"results": []}, 0),
    ([{"index": 0, "score": 0.5}], 0),  # a TEI list carries its count in the header, if anywhere
])
def test_usage_in_the_body(answer: object, expected: int) -> None:
    assert usage_tokens(answer) == expected


@pytest.mark.parametrize("usage", [
    {"prompt_tokens": -5}, {"prompt_tokens": MAX_TOKENS}, {"prompt_tokens": 10**4000}, {"prompt_tokens": "12"},
    {"prompt_tokens": 12.0}, {"prompt_tokens": True}, {"total_tokens": -1}, {"prompt_tokens": [1]}, "12", [12],
])
def test_an_implausible_usage_is_a_malformed_answer(usage: object) -> None:
    with pytest.raises(UpstreamMalformedError):
        usage_tokens({"usage": usage})


def test_usage_count_reads_one_field() -> None:
    assert usage_count({"prompt_tokens": 3, "total_tokens": 4}, "total_tokens") == 4
    assert usage_count(None, "prompt_tokens") == 0
    assert usage_count({}, "prompt_tokens") == 0


def test_the_header_wins_over_the_body_and_a_bad_header_is_not_saved_by_a_good_body() -> None:
    body = json.dumps({"usage": {"prompt_tokens": 3}}).encode()
    assert reported_tokens({"x-prompt-tokens": "8"}, body) == 8
    assert reported_tokens({}, body) == 3
    with pytest.raises(UpstreamMalformedError):
        reported_tokens({"x-prompt-tokens": "-5"}, body)


def test_a_200_whose_body_is_not_json_is_malformed() -> None:
    with pytest.raises(UpstreamMalformedError, match="not JSON"):
        reported_tokens({}, b"<html>upstream proxy error</html>")
    # JSON numbers past Python's digit limit fail to parse: malformed too, not a crash.
    with pytest.raises(UpstreamMalformedError):
        reported_tokens({}, b'{"usage": {"prompt_tokens": ' + b"9" * 5000 + b"}}")
