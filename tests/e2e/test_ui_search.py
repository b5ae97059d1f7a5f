"""The search tab end to end: headless Chromium and ``gradio_client`` against the UI, the UI against a real
gateway with a tiny reranker and a tiny embedding pool, compared with the two stages done by hand on the
API's own answers (``/v1/embeddings`` vectors, cosine top-k, ``/v1/rerank``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from rerankd.ui.search_page import SEARCH_API_DESCRIPTION, SEARCH_API_NAME, SEARCH_HEADERS

pytestmark = pytest.mark.e2e

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


def gradio_client(url: str) -> Any:
    from gradio_client import Client

    return Client(url, verbose=False, analytics_enabled=False, download_files=False)


def test_browser_searches_a_pasted_corpus_and_shows_both_rankings(
    page: Any, ui_url: str, ui_backend_url: str, ui_api_key: str
) -> None:
    query = "Which city is the capital of China?"
    page.goto(ui_url + "/")
    page.get_by_role("tab", name="Search a corpus").click()
    page.locator("#rerankd-search-query textarea").fill(query)
    page.locator("#rerankd-search-button").click()  # no corpus yet: a sentence in the page, not a crash
    page.locator("#rerankd-search-summary").get_by_text("Add at least one passage").wait_for()

    page.locator("#rerankd-search-corpus textarea").fill("\n".join(CORPUS))
    page.locator("#rerankd-search-top-k input").fill("4")
    page.locator("#rerankd-search-button").click()
    page.locator("#rerankd-search-summary").get_by_text("top 4 of 7 passages").wait_for()
    rows = page.evaluate(
        """() => Array.from(document.querySelectorAll('#rerankd-search-table div[role=row]'))
                 .map(row => Array.from(row.querySelectorAll('[role=gridcell]')).map(cell => cell.innerText.trim()))"""
    )
    assert_rows_match(rows, api_search(ui_backend_url, ui_api_key, query, CORPUS, INSTRUCTION, 4), CORPUS)
    summary = page.locator("#rerankd-search-summary").inner_text()
    assert "tiny-embedder" in summary and "tiny-reranker" in summary
    assert ui_api_key not in page.content()


def test_gradio_client_search_matches_the_api_and_reuses_the_corpus_vectors(
    tmp_path: Path, ui_url: str, ui_backend_url: str, ui_api_key: str
) -> None:
    from gradio_client import handle_file

    # Another order than the browser test's corpus, so its vectors are not in the cache yet.
    corpus = CORPUS[5:] + CORPUS[:5]
    upload = tmp_path / "corpus.jsonl"
    upload.write_text("".join(json.dumps({"text": p}) + "\n" for p in corpus[2:]), encoding="utf-8")
    pasted = "\n".join(corpus[:2])
    client = gradio_client(ui_url)
    for query, cached in (("asynchronous web crawler in Python", False), ("Olympic games host city", True)):
        table, summary, details = client.predict(query, "", pasted, handle_file(str(upload)), 3,
                                                 api_name="/" + SEARCH_API_NAME)
        assert table["headers"] == SEARCH_HEADERS
        # "" asks each model for its default instruction, which is the one the reference sends.
        assert_rows_match(table["data"], api_search(ui_backend_url, ui_api_key, query, corpus, INSTRUCTION, 3),
                          corpus)
        assert details["corpus"] == 7 and details["top_k"] == 3
        assert details["embedding"]["model"] == "tiny-embedder" and details["embedding"]["cached"] is cached
        assert details["rerank"]["model"] == "tiny-reranker"
        assert ("corpus vectors reused" in summary) is cached


def test_the_search_endpoint_is_described_and_holds_no_api_key(ui_url: str, ui_api_key: str) -> None:
    info = httpx.get(ui_url + "/gradio_api/info", timeout=30)
    assert ui_api_key not in info.text
    endpoint = info.json()["named_endpoints"]["/" + SEARCH_API_NAME]
    assert [p["parameter_name"] for p in endpoint["parameters"]] == [
        "query", "instruction", "corpus", "corpus_file", "top_k"]
    assert endpoint["description"] == SEARCH_API_DESCRIPTION


@pytest.mark.parametrize(
    ("corpus", "expected"),
    [
        # The stub upstream has no /v1/embeddings: the embedder is unavailable.
        ("one\ntwo", ["Nothing answers at", "/v1/embeddings (404)", "Check `--embedding-url`"]),
        ("\n".join(["p"] * 1001), ["has 1001 passages", "at most 1000 (`--max-corpus`)"]),
    ],
    ids=["embedder-missing", "too-many-passages"],
)
def test_gradio_client_gets_a_clear_message_for_a_search_that_cannot_run(
    stub_ui_url: str, corpus: str, expected: list[str]
) -> None:
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError) as caught:
        gradio_client(stub_ui_url).predict("q", "", corpus, None, 3, api_name="/" + SEARCH_API_NAME)
    for text in expected:
        assert text in caught.value.message
    assert "stub-key" not in caught.value.message
