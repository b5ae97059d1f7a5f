"""The search tab's reference: the two stages done by hand on the API's own answers (``/v1/embeddings``
vectors, cosine top-k, ``/v1/rerank``), which the browser and ``gradio_client`` tests compare the page with."""

from __future__ import annotations

from typing import Any

import httpx
import numpy as np
import pytest

INSTRUCTION = "Given a web search query, retrieve relevant passages that answer the query"
CORPUS = [
    "The capital of China is Beijing.",
    "Gravity is a force that attracts two bodies towards each other.",
    "Shanghai is the largest city in China by population.",
    "使用 aiohttp 和 asyncio 可以实现高效的异步爬虫。",
    "Python lists keep their insertion order.",
    "Beijing hosted the 2008 Summer Olympics.",
    "The Great Wall of China is thousands of kilometres long.",
]


def api_search(url: str, key: str, query: str, passages: list[str], instruction: str, k: int) -> list[list[Any]]:
    """The two stages done by hand on the API: rows [rank, rerank score, embedding rank, cosine, index]."""
    headers = {"Authorization": f"Bearer {key}"}

    def embed(body: dict[str, Any]) -> np.ndarray:
        response = httpx.post(f"{url}/v1/embeddings", json=body, headers=headers, timeout=60)
        assert response.status_code == 200, response.text
        data = sorted(response.json()["data"], key=lambda d: d["index"])
        return np.array([d["embedding"] for d in data], dtype=np.float64)

    query_vector = embed({"input": [query], "instruction": instruction})[0]  # a query, per docs/embeddings.md
    vectors = embed({"input": passages})  # documents: no instruction
    cosines = vectors @ query_vector / (np.linalg.norm(vectors, axis=1) * np.linalg.norm(query_vector))
    kept = [int(i) for i in np.argsort(-cosines, kind="stable")[:k]]
    response = httpx.post(f"{url}/v1/rerank", headers=headers, timeout=60, json={
        "query": query, "documents": [passages[i] for i in kept], "instruction": instruction})
    assert response.status_code == 200, response.text
    return [[rank, r["relevance_score"], r["index"] + 1, float(cosines[kept[r["index"]]]), kept[r["index"]]]
            for rank, r in enumerate(response.json()["results"], start=1)]


def assert_rows_match(rows: list[list[Any]], expected: list[list[Any]], passages: list[str]) -> None:
    assert len(rows) == len(expected)
    for row, (rank, score, embedding_rank, cosine, index) in zip(rows, expected, strict=True):
        assert int(row[0]) == rank
        assert float(row[1]) == pytest.approx(score, abs=1e-6)
        assert int(row[2]) == embedding_rank
        assert float(row[3]) == pytest.approx(cosine, abs=2e-6)
        assert int(row[4]) == index
        assert row[5] == passages[index]
