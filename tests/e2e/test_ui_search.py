"""The search tab end to end through ``gradio_client``: the UI against a real gateway with a tiny reranker and a
tiny embedding pool, compared with the two stages done by hand on the API (``search_reference``). Its one
browser test is in ``test_ui_browser.py``, which has the module's Chromium already running."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from rerankd.ui.search_page import SEARCH_API_DESCRIPTION, SEARCH_API_NAME, SEARCH_HEADERS

from .search_reference import CORPUS, INSTRUCTION, api_search, assert_rows_match

pytestmark = pytest.mark.e2e


def gradio_client(url: str) -> Any:
    from gradio_client import Client

    return Client(url, verbose=False, analytics_enabled=False, download_files=False)


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
