"""Wire models: validation rules and the mapping of dialects to the internal form."""

from __future__ import annotations

import pytest
from pydantic import TypeAdapter, ValidationError

from rerankd.protocol import (
    AnyRerankRequest,
    FieldError,
    RerankRequest,
    ScoreRequest,
    TEIRerankRequest,
    build_rerank_response,
    is_tei_body,
    rank_order,
    ranked_text,
    sigmoid,
)


def test_rank_order_sorts_desc_with_lower_index_on_ties() -> None:
    assert rank_order([0.1, 0.9, 0.9, 0.5]) == [1, 2, 3, 0]
    assert rank_order([0.1, 0.9, 0.9, 0.5], top_n=2) == [1, 2]
    assert rank_order([0.3], top_n=10) == [0]


def test_sigmoid_is_stable_at_extremes() -> None:
    assert sigmoid(0) == 0.5
    assert sigmoid(-1000) == 0.0 and sigmoid(1000) == 1.0


def test_score_request_one_to_many_and_pairwise() -> None:
    one = ScoreRequest(text_1="q", text_2=["a", "b"])
    assert one.pairs() == [("q", "a"), ("q", "b")]
    pairwise = ScoreRequest(text_1=["q1", "q2", "q1"], text_2=["a", "b", "c"])
    tasks, where = pairwise.to_tasks()
    assert [t.query for t in tasks] == ["q1", "q2"] and tasks[0].documents == ["a", "c"]
    assert where == [(0, 0), (1, 0), (0, 1)]
    with pytest.raises(ValidationError):
        ScoreRequest(text_1=["a", "b"], text_2=["x"])


def test_rerank_response_top_n_return_documents_and_raw() -> None:
    req = RerankRequest(query="q", documents=["a", {"text": "b"}, "c"], top_n=2, return_documents=False)
    resp = build_rerank_response(req, [0.0, 2.0, -1.0], 30, "m", "id-1")
    assert [r.index for r in resp.results] == [1, 0]
    assert resp.results[0].document is None and resp.results[0].relevance_score == pytest.approx(sigmoid(2.0))
    raw = build_rerank_response(RerankRequest(query="q", documents=["a"], raw_scores=True), [3.5], 1, "m", "i")
    assert raw.results[0].relevance_score == 3.5


def test_long_document_fields_map_to_the_task() -> None:
    plain = RerankRequest(query="q", documents=["a"]).to_task()
    assert (plain.max_chunks_per_doc, plain.chunk_overlap_tokens, plain.max_prompt_tokens) == (None, 0, None)
    chunked = RerankRequest.model_validate({"query": "q", "documents": ["a"], "max_chunks_per_doc": 4,
                                            "chunk_overlap_tokens": 16, "truncate_prompt_tokens": 300}).to_task()
    assert (chunked.max_chunks_per_doc, chunked.chunk_overlap_tokens, chunked.max_prompt_tokens) == (4, 16, 300)
    with pytest.raises(ValidationError, match="send `max_chunks_per_doc` with it"):
        RerankRequest.model_validate({"query": "q", "documents": ["a"], "chunk_overlap_tokens": 16})


def test_truncate_prompt_tokens_minus_one_is_the_model_length() -> None:
    (task,), _ = ScoreRequest(text_1="q", text_2=["a"], truncate_prompt_tokens=-1).to_tasks()
    assert task.max_prompt_tokens is None and task.max_tokens_per_doc is None
    (task,), _ = ScoreRequest(text_1="q", text_2=["a"], truncate_prompt_tokens=77).to_tasks()
    assert task.max_prompt_tokens == 77 and task.max_tokens_per_doc is None  # the whole prompt, not the document
    with pytest.raises(ValidationError):
        ScoreRequest(text_1="q", text_2=["a"], truncate_prompt_tokens=-2)


@pytest.mark.parametrize(("given", "direction"), [("Right", "right"), ("right", "right"), ("Left", "left"),
                                                  ("left", "left")])
def test_tei_truncation_direction_both_spellings(given: str, direction: str) -> None:
    task = TEIRerankRequest(query="q", texts=["a"], truncation_direction=given).to_task()  # type: ignore[arg-type]
    assert task.truncation_direction == direction


def test_rerank_route_picks_one_dialect_per_body() -> None:
    adapter: TypeAdapter[RerankRequest | TEIRerankRequest] = TypeAdapter(AnyRerankRequest)
    assert isinstance(adapter.validate_python({"query": "q", "texts": ["a"]}), TEIRerankRequest)
    assert isinstance(adapter.validate_python({"query": "q", "documents": ["a"]}), RerankRequest)
    with pytest.raises(ValidationError) as tei:
        adapter.validate_python({"query": "q", "texts": ["a"], "truncation_direction": "Up"})
    assert [e["loc"] for e in tei.value.errors()] == [("TEIRerankRequest", "truncation_direction")]


def test_rank_fields_build_yaml_like_lines_in_their_order_and_one_field_is_its_value() -> None:
    doc = {"title": "T", "body": "B\nmore", "year": 1999}
    req = RerankRequest(query="q", documents=[doc, "plain"], rank_fields=["body", "title"])
    assert req.document_texts() == ["body: B\nmore\ntitle: T", "plain"]  # strings are scored as they are
    assert req.returned_document(0) == doc and req.returned_document(1) == {"text": "plain"}
    assert RerankRequest(query="q", documents=[doc], rank_fields=["title"]).document_texts() == ["T"]
    assert ranked_text({"text": "t", "id": 3}, ["text"]) == "t"
    assert RerankRequest(query="q", documents=[{"text": "t", "id": 3}]).document_texts() == ["t"]


@pytest.mark.parametrize(("documents", "rank_fields", "field"), [
    ([{"title": "T"}], None, "documents.0.text"),
    (["a", {"text": "b"}, {"title": "T"}], ["title"], "documents.1.title"),
    ([{"title": "T", "year": 1999}], ["title", "year"], "documents.0.year"),
    ([{"text": None}], None, "documents.0.text"),
])
def test_a_missing_or_non_string_rank_field_names_document_and_field(documents: list, rank_fields: list | None,
                                                                     field: str) -> None:
    with pytest.raises(ValidationError) as caught:
        RerankRequest(query="q", documents=documents, rank_fields=rank_fields)
    cause = caught.value.errors()[0]["ctx"]["error"]
    assert isinstance(cause, FieldError) and cause.field == field
    _, index, name = field.split(".")
    assert f"`documents[{index}]" in str(cause) and f"{name}`" in str(cause)


@pytest.mark.parametrize("priority", ["1", 1.0, True, -(2**31) - 1, 2**31])
def test_priority_is_a_json_integer_in_the_int32_range(priority: object) -> None:
    for model, body in ((RerankRequest, {"query": "q", "documents": ["a"]}), (ScoreRequest, {"text_1": "q",
                                                                                                "text_2": "a"}),
                        (TEIRerankRequest, {"query": "q", "texts": ["a"]})):
        assert model.model_validate({**body, "priority": -3}).priority == -3
        assert model.model_validate(body).priority == 0
        with pytest.raises(ValidationError):
            model.model_validate({**body, "priority": priority})


def test_slash_rerank_bodies_validate_as_the_dialect_they_are() -> None:
    adapter: TypeAdapter[object] = TypeAdapter(AnyRerankRequest)
    assert isinstance(adapter.validate_python({"query": "q", "texts": ["a"]}), TEIRerankRequest)
    assert isinstance(adapter.validate_python({"query": "q", "documents": ["a"], "texts": ["b"]}), RerankRequest)
    with pytest.raises(ValidationError) as caught:
        adapter.validate_python({"query": "q", "texts": []})
    assert [e["loc"] for e in caught.value.errors()] == [("TEIRerankRequest", "texts")]
    assert is_tei_body(b'{"query": "q", "texts": ["a"]}') and not is_tei_body(b'{"documents": ["texts"]}')
