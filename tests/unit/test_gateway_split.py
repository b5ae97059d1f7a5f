"""Split plans and the exact merge, checked against ranking the whole list at once."""

from __future__ import annotations

import json
import random

import pytest

from rerankd.gateway.split import merge_rerank_parts, plan_split
from rerankd.protocol import RerankRequest, rank_order


def answer_for(body: bytes, scores: dict[str, float]) -> dict[str, object]:
    """What a replica answers for one part: its documents ranked by ``scores`` (local indices)."""
    part = json.loads(body)
    texts = [d if isinstance(d, str) else d["text"] for d in part["documents"]]
    local = [scores[t] for t in texts]
    order = rank_order(local, part.get("top_n"))
    assert part["return_documents"] is False
    return {"id": "x", "model": "m", "results": [{"index": i, "relevance_score": local[i]} for i in order],
            "usage": {"prompt_tokens": 10 * len(texts), "total_tokens": 10 * len(texts)}}


@pytest.mark.parametrize("top_n", [None, 1, 7, 50, 1000])
@pytest.mark.parametrize("replicas", [2, 3, 8])
def test_merge_equals_ranking_everything_at_once(top_n: int | None, replicas: int) -> None:
    rng = random.Random(top_n or 0)
    texts = [f"doc {i}" for i in range(203)]
    # Many exact ties, across part boundaries too: order must still be lower index first.
    scores = {t: rng.choice([0.1, 0.5, 0.5, 0.9]) + (0 if i % 3 else rng.random()) for i, t in enumerate(texts)}
    request = RerankRequest(query="q", documents=[*texts[:100], *({"text": t} for t in texts[100:])], top_n=top_n)
    plan = plan_split(request, threshold=16, replicas=replicas)
    assert plan is not None and len(plan.slices) == min(replicas, 13)
    assert plan.slices[0][0] == 0 and plan.slices[-1][1] == 203
    assert all(a[1] == b[0] for a, b in zip(plan.slices, plan.slices[1:], strict=False))
    merged = merge_rerank_parts(plan, [answer_for(b, scores) for b in plan.bodies()], "rid")
    expected = rank_order([scores[t] for t in texts], top_n)
    assert [r["index"] for r in merged["results"]] == expected
    assert [r["document"]["text"] for r in merged["results"]] == [texts[i] for i in expected]
    assert merged["usage"] == {"prompt_tokens": 2030, "total_tokens": 2030}
    assert merged["id"] == "rid"


def test_no_split_for_small_requests_or_a_single_replica() -> None:
    request = RerankRequest(query="q", documents=["a"] * 10)
    assert plan_split(request, threshold=10, replicas=3) is None
    assert plan_split(request, threshold=2, replicas=1) is None
    assert plan_split(request, threshold=2, replicas=3) is not None


def test_part_bodies_keep_every_option_but_the_echo() -> None:
    request = RerankRequest(query="q", documents=["a", "b", "c", "d"], instruction="inst", top_n=3,
                            max_tokens_per_doc=9, raw_scores=True, model="m")
    plan = plan_split(request, threshold=1, replicas=2)
    assert plan is not None
    parts = [json.loads(b) for b in plan.bodies()]
    assert [p["documents"] for p in parts] == [["a", "b"], ["c", "d"]]
    for p in parts:
        assert (p["instruction"], p["max_tokens_per_doc"], p["raw_scores"], p["model"]) == ("inst", 9, True, "m")
        assert p["top_n"] == 2 and p["return_documents"] is False


def test_chunked_parts_keep_the_chunk_fields_and_the_merge_keeps_each_best_chunk() -> None:
    texts = [f"doc {i}" for i in range(9)]
    request = RerankRequest.model_validate({"query": "q", "documents": texts, "top_n": 5, "max_chunks_per_doc": 6,
                                            "chunk_overlap_tokens": 32, "truncate_prompt_tokens": 512})
    plan = plan_split(request, threshold=2, replicas=3)
    assert plan is not None
    for body in plan.bodies():
        part = json.loads(body)
        fields = ("max_chunks_per_doc", "chunk_overlap_tokens", "truncate_prompt_tokens")
        assert tuple(part[f] for f in fields) == (6, 32, 512)
    scores = {t: 0.1 * i for i, t in enumerate(texts)}
    answers = []
    for body in plan.bodies():
        answer = answer_for(body, scores)
        for item in answer["results"]:  # type: ignore[attr-defined]
            item["chunk_index"] = int(json.loads(body)["documents"][item["index"]].split()[1]) % 4  # doc i: i % 4
        answers.append(answer)
    merged = merge_rerank_parts(plan, answers, "rid")
    assert [r["index"] for r in merged["results"]] == [8, 7, 6, 5, 4]
    assert [r["chunk_index"] for r in merged["results"]] == [0, 3, 2, 1, 0]
    # an unchunked request's results carry no chunk field
    plain = plan_split(RerankRequest(query="q", documents=texts), threshold=2, replicas=3)
    assert plain is not None
    merged = merge_rerank_parts(plain, [answer_for(b, scores) for b in plain.bodies()], "rid")
    assert all("chunk_index" not in r for r in merged["results"])


def test_a_chunked_part_without_chunk_index_is_malformed() -> None:
    request = RerankRequest(query="q", documents=["a", "b"], max_chunks_per_doc=2)
    plan = plan_split(request, threshold=1, replicas=2)
    assert plan is not None
    with pytest.raises(KeyError):  # the distributor's 502: a replica that does not chunk
        merge_rerank_parts(plan, [answer_for(b, {"a": 0.1, "b": 0.2}) for b in plan.bodies()], "rid")
