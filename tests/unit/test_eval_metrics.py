"""Metric arithmetic of ``rerankd.evaluation.metrics`` against hand-written formulas (not ranx)."""

from __future__ import annotations

import math
import random

import pytest

from eval_reference import mean_metrics, mrr_at_k, ndcg_at_k, recall_at_k
from rerankd.evaluation.metrics import evaluate_rankings, metric_names, relative_lift

QRELS = {"q1": {"a": 2, "b": 1, "c": 0, "z": 1}, "q2": {"x": 1}}
RANKINGS = {"q1": ["c", "a", "d", "b"], "q2": ["y", "w", "x"]}


def test_a_worked_example_by_hand() -> None:
    means, per_query = evaluate_rankings(QRELS, RANKINGS, [1, 3, 5])
    # q1: ranking c(0) a(2) d(-) b(1); relevant a, b, z; ideal grades 2, 1, 1.
    idcg3 = 2 / math.log2(2) + 1 / math.log2(3) + 1 / math.log2(4)
    assert per_query["q1"]["ndcg@1"] == 0.0
    assert per_query["q1"]["ndcg@3"] == pytest.approx((2 / math.log2(3)) / idcg3)
    assert per_query["q1"]["ndcg@5"] == pytest.approx((2 / math.log2(3) + 1 / math.log2(5)) / idcg3)
    assert per_query["q1"]["mrr@1"] == 0.0 and per_query["q1"]["mrr@3"] == pytest.approx(1 / 2)
    assert per_query["q1"]["recall@3"] == pytest.approx(1 / 3) and per_query["q1"]["recall@5"] == pytest.approx(2 / 3)
    # q2: the one relevant document at rank 3.
    assert per_query["q2"]["ndcg@3"] == pytest.approx(1 / math.log2(4))
    assert per_query["q2"]["mrr@3"] == pytest.approx(1 / 3) and per_query["q2"]["mrr@1"] == 0.0
    assert per_query["q2"]["recall@1"] == 0.0 and per_query["q2"]["recall@3"] == 1.0
    assert means["recall@5"] == pytest.approx((2 / 3 + 1) / 2)
    assert means["mrr@3"] == pytest.approx((1 / 2 + 1 / 3) / 2)


def test_random_rankings_match_the_reference_formulas() -> None:
    rng = random.Random(7)
    docs = [f"d{i}" for i in range(30)]
    qrels = {f"q{i}": {d: rng.choice([0, 1, 1, 2, 3]) for d in rng.sample(docs, rng.randint(1, 8))} for i in range(40)}
    rankings = {q: rng.sample(docs, rng.randint(0, 25)) for q in qrels}
    ks = [1, 3, 5, 10, 20]
    means, per_query = evaluate_rankings(qrels, rankings, ks)
    expected = mean_metrics(qrels, rankings, ks)
    assert means.keys() == expected.keys()
    for name, value in expected.items():
        assert means[name] == pytest.approx(value, abs=1e-9), name
    for q in qrels:
        for k in ks:
            assert per_query[q][f"ndcg@{k}"] == pytest.approx(ndcg_at_k(rankings[q], qrels[q], k), abs=1e-9)
            assert per_query[q][f"mrr@{k}"] == pytest.approx(mrr_at_k(rankings[q], qrels[q], k), abs=1e-9)
            assert per_query[q][f"recall@{k}"] == pytest.approx(recall_at_k(rankings[q], qrels[q], k), abs=1e-9)


def test_missing_ranking_and_unjudged_query_score_zero_and_still_count_in_the_mean() -> None:
    qrels = {"q1": {"a": 1}, "q2": {"b": 1}, "q3": {"c": 0}}
    means, per_query = evaluate_rankings(qrels, {"q1": ["a"], "q3": ["c"]}, [10])
    assert per_query["q2"] == {"ndcg@10": 0.0, "mrr@10": 0.0, "recall@10": 0.0}
    assert per_query["q3"]["ndcg@10"] == 0.0
    assert means["ndcg@10"] == pytest.approx(1 / 3)


def test_order_not_score_decides_and_duplicates_count_once() -> None:
    # Many tied BM25 scores: the list order we give is the order ranx must evaluate.
    _, per_query = evaluate_rankings({"q": {"b": 1}}, {"q": ["a", "b"]}, [1])
    assert per_query["q"]["mrr@1"] == 0.0
    _, per_query = evaluate_rankings({"q": {"b": 1}}, {"q": ["b", "a"]}, [1])
    assert per_query["q"]["mrr@1"] == 1.0
    _, per_query = evaluate_rankings({"q": {"a": 1, "b": 1}}, {"q": ["a", "a", "b"]}, [2])
    assert per_query["q"]["recall@2"] == 1.0


def test_metric_names_and_single_metric() -> None:
    assert metric_names([1, 10]) == ["ndcg@1", "ndcg@10", "mrr@1", "mrr@10", "recall@1", "recall@10"]
    means, _ = evaluate_rankings({"q": {"a": 1}}, {"q": ["x", "a"]}, [2])
    assert means["mrr@2"] == 0.5


def test_relative_lift() -> None:
    assert relative_lift(0.5, 0.6) == pytest.approx(0.2)
    assert relative_lift(0.4, 0.3) == pytest.approx(-0.25)
    assert relative_lift(0.0, 0.3) is None
