"""Long documents over HTTP: chunking (`max_chunks_per_doc`), TEI's `truncation_direction`, vLLM's
`truncate_prompt_tokens`, and their errors. Token counts are checked against the server's own PromptBuilder on
the same tokenizer; that a chunked score is the max of its chunks is tests/unit/test_engine_chunks.py's."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from transformers import AutoTokenizer

from rerankd.engine.prompt import PromptBuilder
from rerankd.server.settings import ServerSettings
from support import running_server

QUERY = "what is the capital of France?"
LONG = " ".join(f"Paris word{i}" if i % 41 == 0 else f"word{i}" for i in range(300))  # ~900 tokens
SHORT = "Paris is the capital of France."
MODEL_LEN = 256


@pytest.fixture(scope="module")
def server(tiny_model_dir: Path) -> Iterator[str]:
    settings = ServerSettings(model=str(tiny_model_dir), served_model_name="tiny-reranker", device="cpu",
                              dtype="float32", max_model_len=MODEL_LEN, max_chunks_per_request=30, compile="off")
    with running_server(settings) as url:
        yield url


@pytest.fixture(scope="module")
def builder(tiny_model_dir: Path) -> PromptBuilder:
    return PromptBuilder(AutoTokenizer.from_pretrained(str(tiny_model_dir)), MODEL_LEN)


def post(url: str, path: str, body: dict) -> httpx.Response:
    return httpx.post(f"{url}{path}", json=body, timeout=60)


def test_chunked_rerank_names_the_best_chunk_and_bills_every_chunk(server: str, builder: PromptBuilder) -> None:
    fields = {"max_tokens_per_doc": 50, "max_chunks_per_doc": 10, "chunk_overlap_tokens": 5}
    r = post(server, "/v1/rerank", {"query": QUERY, "documents": [LONG, SHORT], **fields})
    assert r.status_code == 200, r.text
    results = {x["index"]: x for x in r.json()["results"]}
    assert results[1]["chunk_index"] == 0 and 0 <= results[0]["chunk_index"] < 10
    group = builder.build(QUERY, [LONG, SHORT], max_tokens_per_doc=50, max_chunks=10, chunk_overlap=5)
    assert group.chunks == [10, 1]
    assert r.json()["usage"]["prompt_tokens"] == group.prompt_tokens  # all 11 prompts, in full
    # Chunk 0 is the cut document: the best chunk scores at least what truncation gives.
    plain = post(server, "/v1/rerank", {"query": QUERY, "documents": [LONG, SHORT], "max_tokens_per_doc": 50})
    cut = {x["index"]: x for x in plain.json()["results"]}
    assert results[0]["relevance_score"] >= cut[0]["relevance_score"] - 1e-6
    assert results[1]["relevance_score"] == pytest.approx(cut[1]["relevance_score"], abs=1e-6)
    assert plain.json()["usage"]["prompt_tokens"] < group.prompt_tokens


def test_without_max_chunks_per_doc_the_answer_has_no_chunk_field(server: str) -> None:
    r = post(server, "/v2/rerank", {"query": QUERY, "documents": [LONG, SHORT]})
    assert r.status_code == 200
    assert all(set(x) == {"index", "relevance_score", "document"} for x in r.json()["results"])


@pytest.mark.parametrize(
    ("body", "status", "field", "needle"),
    [
        ({"max_chunks_per_doc": 0}, 422, "max_chunks_per_doc", "greater than or equal to 1"),
        ({"chunk_overlap_tokens": 4}, 422, None, "send `max_chunks_per_doc` with it"),
        ({"max_chunks_per_doc": 2, "chunk_overlap_tokens": -1}, 422, "chunk_overlap_tokens", "greater than"),
        ({"max_chunks_per_doc": 2, "max_tokens_per_doc": 20, "chunk_overlap_tokens": 20}, 422,
         "chunk_overlap_tokens", "not smaller than the chunk length of 20 tokens"),
        ({"max_chunks_per_doc": 16}, 413, "max_chunks_per_doc", "--max-chunks-per-request"),
        ({"truncate_prompt_tokens": -2}, 422, "truncate_prompt_tokens", "greater than or equal to -1"),
        ({"truncate_prompt_tokens": MODEL_LEN + 1}, 400, "truncate_prompt_tokens", "more than the model length"),
        ({"truncate_prompt_tokens": 40}, 400, "truncate_prompt_tokens", "raise `truncate_prompt_tokens`"),
    ],
)
def test_long_document_fields_have_clear_errors(server: str, body: dict, status: int, field: str | None,
                                                needle: str) -> None:
    r = post(server, "/v1/rerank", {"query": QUERY, "documents": [LONG, SHORT], **body})
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert needle in error["message"]
    if field is not None:
        assert error["field"] == field or error["field"].startswith(field)


def test_the_chunk_cap_counts_documents_times_chunks(server: str) -> None:
    r = post(server, "/v1/rerank", {"query": QUERY, "documents": [SHORT] * 3, "max_chunks_per_doc": 10})
    assert r.status_code == 200  # 3 x 10 = 30: at the cap
    r = post(server, "/v1/rerank", {"query": QUERY, "documents": [SHORT] * 4, "max_chunks_per_doc": 8})
    assert r.status_code == 413
    message = r.json()["error"]["message"]
    assert "4 `documents` x `max_chunks_per_doc` 8 = 32 chunks, more than the limit of 30" in message


def test_tei_truncation_direction_left_cuts_the_start_of_the_text(server: str, builder: PromptBuilder) -> None:
    answers = {}
    for direction in ("Right", "right", "Left", "left"):
        r = post(server, "/rerank", {"query": QUERY, "texts": [LONG], "raw_scores": True,
                                     "truncation_direction": direction})
        assert r.status_code == 200, r.text
        answers[direction] = r.json()[0]["score"]
        assert int(r.headers["x-prompt-tokens"]) == MODEL_LEN
    assert answers["Left"] == answers["left"] and answers["Right"] == answers["right"]
    assert answers["Left"] != answers["Right"]
    default = post(server, "/rerank", {"query": QUERY, "texts": [LONG], "raw_scores": True}).json()[0]["score"]
    assert default == answers["Right"]
    r = post(server, "/rerank", {"query": QUERY, "texts": [LONG], "truncate": False, "truncation_direction": "Left"})
    # TEI's answer to a text it may not cut: a 422 in TEI's error shape, naming the text.
    assert r.status_code == 422 and r.json()["error_type"] == "Validation", r.text
    assert "texts[0]" in r.json()["error"], r.text


def test_a_bad_tei_field_names_the_tei_field_not_documents(server: str) -> None:
    r = post(server, "/rerank", {"query": QUERY, "texts": ["a"], "truncation_direction": "Up"})
    assert r.status_code == 422
    error = r.json()  # TEI's error shape: {"error": message, "error_type": ...}
    assert "truncation_direction" in error["error"] and "documents" not in error["error"], error
    r = post(server, "/rerank", {"query": QUERY, "documents": ["a"], "top_n": 0})
    assert r.status_code == 422 and r.json()["error"]["field"] == "top_n"


def test_truncate_prompt_tokens_cuts_each_whole_prompt(server: str, builder: PromptBuilder) -> None:
    body = {"text_1": QUERY, "text_2": [LONG, SHORT]}
    capped = post(server, "/v1/score", {**body, "truncate_prompt_tokens": 100})
    assert capped.status_code == 200, capped.text
    short_prompt = builder.build(QUERY, [SHORT]).prompt_tokens
    assert capped.json()["usage"]["prompt_tokens"] == 100 + short_prompt  # the long pair is cut to 100 in all
    whole = post(server, "/v1/score", body).json()
    minus_one = post(server, "/v1/score", {**body, "truncate_prompt_tokens": -1}).json()
    assert minus_one["usage"] == whole["usage"] and whole["usage"]["prompt_tokens"] == MODEL_LEN + short_prompt
    assert [d["score"] for d in minus_one["data"]] == [d["score"] for d in whole["data"]]
    rerank = post(server, "/v1/rerank", {"query": QUERY, "documents": [LONG, SHORT], "truncate_prompt_tokens": 100})
    assert rerank.json()["usage"] == capped.json()["usage"]
    too_small = post(server, "/v1/score", {**body, "truncate_prompt_tokens": 40})
    assert too_small.status_code == 400 and too_small.json()["error"]["field"] == "truncate_prompt_tokens"
