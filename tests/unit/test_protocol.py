"""Wire models: validation rules and the mapping of dialects to the internal form."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from rerankd.protocol import RerankRequest, ScoreRequest, build_rerank_response, rank_order, sigmoid


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
