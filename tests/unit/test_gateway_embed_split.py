"""Splitting an embedding request's input list and merging the parts (pure functions; the real replicas' split is
in tests/integration/test_gateway_embeddings.py), and the shape a replica's embedding 200 must have."""

from __future__ import annotations

import json

import pytest

from rerankd.errors import UpstreamMalformedError
from rerankd.gateway.answers import AnswerShape, accept_answer, check_answer
from rerankd.gateway.embed_split import merge_embed_parts, plan_embed_split


def vec(i: int) -> list[float]:
    return [float(i), -float(i)]


def test_a_list_over_the_threshold_is_cut_in_contiguous_slices_with_every_other_field_kept() -> None:
    body = json.dumps({"input": [f"t{i}" for i in range(5)], "dimensions": 2, "model": "m"}).encode()
    plan = plan_embed_split(AnswerShape.OPENAI_EMBED, body, 5, threshold=2, replicas=3)
    assert plan is not None and plan.slices == [(0, 2), (2, 4), (4, 5)]
    parts = [json.loads(b) for b in plan.bodies()]
    assert [p["input"] for p in parts] == [["t0", "t1"], ["t2", "t3"], ["t4"]]
    assert all(p["dimensions"] == 2 and p["model"] == "m" for p in parts)
    assert plan_embed_split(AnswerShape.OPENAI_EMBED, body, 5, threshold=5, replicas=3) is None
    assert plan_embed_split(AnswerShape.OPENAI_EMBED, body, 5, threshold=2, replicas=1) is None
    one_token_list = json.dumps({"input": [1, 2, 3, 4, 5]}).encode()  # one input's ids, never split
    assert plan_embed_split(AnswerShape.OPENAI_EMBED, one_token_list, 1, threshold=0, replicas=3) is None


def test_openai_parts_merge_by_input_index_with_usage_summed() -> None:
    body = json.dumps({"input": [f"t{i}" for i in range(4)]}).encode()
    plan = plan_embed_split(AnswerShape.OPENAI_EMBED, body, 4, threshold=2, replicas=2)
    assert plan is not None
    answers = [{"object": "list", "model": "m", "data": [{"object": "embedding", "index": i, "embedding": vec(s + i)}
                                                         for i in reversed(range(2))],
                "usage": {"prompt_tokens": 3 + s, "total_tokens": 3 + s}} for s in (0, 2)]
    merged, total = merge_embed_parts(plan, answers, [3, 5])
    assert [d["index"] for d in merged["data"]] == [0, 1, 2, 3]
    assert [d["embedding"] for d in merged["data"]] == [vec(i) for i in range(4)]
    assert total == 8 and merged["usage"] == {"prompt_tokens": 8, "total_tokens": 8}
    check_answer(AnswerShape.OPENAI_EMBED, merged, 4)


def test_tei_and_cohere_parts_concatenate_in_order() -> None:
    tei = plan_embed_split(AnswerShape.TEI_EMBED, json.dumps({"inputs": list("abc")}).encode(), 3, 1, 3)
    assert tei is not None
    assert merge_embed_parts(tei, [[vec(0)], [vec(1)], [vec(2)]], [1, 1, 1]) == ([vec(0), vec(1), vec(2)], 3)
    cohere = plan_embed_split(AnswerShape.COHERE_EMBED, json.dumps({"texts": list("abc")}).encode(), 3, 2, 2)
    assert cohere is not None and cohere.slices == [(0, 2), (2, 3)]
    answers = [{"id": "x", "embeddings": {"float": [vec(0), vec(1)], "int8": [[0], [1]]}, "texts": ["a", "b"],
                "meta": {"billed_units": {"input_tokens": 4}}},
               {"id": "y", "embeddings": {"float": [vec(2)], "int8": [[2]]}, "texts": ["c"],
                "meta": {"billed_units": {"input_tokens": 2}}}]
    merged, total = merge_embed_parts(cohere, answers, [4, 2])
    assert total == 6
    assert merged["embeddings"] == {"float": [vec(0), vec(1), vec(2)], "int8": [[0], [1], [2]]}
    assert merged["texts"] == ["a", "b", "c"] and merged["meta"]["billed_units"] == {"input_tokens": 6}
    assert accept_answer(AnswerShape.COHERE_EMBED, {}, json.dumps(merged).encode(), 3) == 6


def test_cohere_v1_floats_answers_merge_as_one_list_in_order() -> None:
    """Cohere v1's ``embeddings_floats`` answer holds the vectors themselves, not an object by type."""
    plan = plan_embed_split(AnswerShape.COHERE_V1_EMBED, json.dumps({"texts": list("abc")}).encode(), 3, 2, 2)
    assert plan is not None and plan.slices == [(0, 2), (2, 3)]
    answers = [{"id": "x", "response_type": "embeddings_floats", "embeddings": [vec(0), vec(1)], "texts": ["a", "b"],
                "meta": {"api_version": {"version": "1"}, "billed_units": {"input_tokens": 4}}},
               {"id": "y", "response_type": "embeddings_floats", "embeddings": [vec(2)], "texts": ["c"],
                "meta": {"api_version": {"version": "1"}, "billed_units": {"input_tokens": 2}}}]
    merged, total = merge_embed_parts(plan, answers, [4, 2])
    assert total == 6 and merged["embeddings"] == [vec(0), vec(1), vec(2)]
    assert merged["response_type"] == "embeddings_floats" and merged["texts"] == ["a", "b", "c"]
    assert merged["meta"] == {"api_version": {"version": "1"}, "billed_units": {"input_tokens": 6}}
    assert accept_answer(AnswerShape.COHERE_V1_EMBED, {}, json.dumps(merged).encode(), 3) == 6
    with pytest.raises(UpstreamMalformedError, match="`embeddings` must be a list of 3 vectors"):
        check_answer(AnswerShape.COHERE_V1_EMBED, {"embeddings": [vec(0)]}, 3)
    with pytest.raises(UpstreamMalformedError, match="`embeddings` must be an object"):
        check_answer(AnswerShape.COHERE_EMBED, {"embeddings": [vec(0), vec(1), vec(2)]}, 3)  # v2 has no list form


@pytest.mark.parametrize(("shape", "answer", "words"), [
    (AnswerShape.OPENAI_EMBED, {"data": [{"index": 0, "embedding": [1.0]}]}, "list of 2 embeddings"),
    (AnswerShape.OPENAI_EMBED, {"data": [{"index": 0, "embedding": [1.0]}, {"index": 5, "embedding": [1.0]}]},
     "index from 0 to 1"),
    (AnswerShape.OPENAI_EMBED, {"data": [{"index": 0, "embedding": 3}, {"index": 1, "embedding": [1.0]}]},
     "list of numbers or a base64 string"),
    (AnswerShape.TEI_EMBED, {"vectors": []}, "list of 2 vectors"),
    (AnswerShape.TEI_EMBED, [[1.0]], "list of 2 vectors, got 1 items"),
    (AnswerShape.COHERE_EMBED, {"embeddings": {"float": [[1.0]]}}, "`embeddings.float` must be a list of 2"),
    (AnswerShape.COHERE_EMBED, {"embeddings": []}, "`embeddings` must be an object"),
])
def test_an_embedding_answer_without_one_vector_per_input_is_a_502(shape: AnswerShape, answer: object,
                                                                    words: str) -> None:
    with pytest.raises(UpstreamMalformedError, match=words):
        check_answer(shape, answer, 2)


def test_a_cohere_count_that_is_not_a_count_is_a_502() -> None:
    body = {"embeddings": {"float": [vec(0)]}, "meta": {"billed_units": {"input_tokens": -1}}}
    with pytest.raises(UpstreamMalformedError, match="implausible"):
        accept_answer(AnswerShape.COHERE_EMBED, {}, json.dumps(body).encode(), 1)
