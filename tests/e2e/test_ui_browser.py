"""The web UI end to end: headless Chromium and ``gradio_client`` against the UI, the UI against a real
rerank API (and against a stub upstream that answers 429/503/413 or hangs), compared with the API
called directly. The search tab's browser test is here too (one Chromium per module); its ``gradio_client``
tests are in ``test_ui_search.py``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from rerankd.ui.app import (
    API_DESCRIPTION,
    API_NAME,
    DEFAULT_INSTRUCTION,
    EXAMPLES,
    INSTRUCTION_PRESETS,
    TABLE_HEADERS,
    score_bar,
)

from .conftest import StubUpstream, running_ui, save_artifact
from .search_reference import CORPUS, INSTRUCTION, api_search, assert_rows_match

pytestmark = pytest.mark.e2e

TOAST = "[data-testid=toast-body]"


# ------------------------------------------------------------------------------------------- helpers


def api_rerank(url: str, key: str, query: str, documents: list[str], instruction: str,
               top_n: int | None = None) -> dict[str, Any]:
    """The rerank API called directly: the reference the UI's numbers must equal."""
    body: dict[str, Any] = {"query": query, "documents": documents, "instruction": instruction}
    if top_n:
        body["top_n"] = top_n
    response = httpx.post(f"{url}/v1/rerank", json=body, headers={"Authorization": f"Bearer {key}"}, timeout=60)
    assert response.status_code == 200, response.text
    return response.json()


def read_table(page: Any) -> list[list[str]]:
    """The ranked table's body cells as the browser renders them (Gradio's virtual rows, header excluded)."""
    return page.evaluate(
        """() => Array.from(document.querySelectorAll('#rerankd-table div[role=row]'))
                 .map(row => Array.from(row.querySelectorAll('[role=gridcell]')).map(cell => cell.innerText.trim()))"""
    )


def fill_and_rank(page: Any, base_url: str, query: str, documents: str) -> None:
    page.goto(base_url + "/")
    page.locator("#rerankd-query textarea").fill(query)
    page.locator("#rerankd-documents textarea").fill(documents)
    page.locator("#rerankd-rank").click()


def assert_table_matches_api(rows: list[list[Any]], api: dict[str, Any], documents: list[str]) -> None:
    """Rank, score (to the table's six decimals), bar, original index and text, row by row."""
    results = api["results"]
    assert len(rows) == len(results)
    for rank, (row, result) in enumerate(zip(rows, results, strict=True), start=1):
        assert int(row[0]) == rank
        assert float(row[1]) == pytest.approx(result["relevance_score"], abs=1e-6)
        assert row[2] == score_bar(result["relevance_score"])
        assert int(row[3]) == result["index"]
        assert row[4] == documents[result["index"]]


def gradio_client(url: str) -> Any:
    from gradio_client import Client

    return Client(url, verbose=False, analytics_enabled=False, download_files=False)


# ------------------------------------------------------------------------------------------- browser


def test_browser_ranks_the_chinese_example_like_the_api(
    page: Any, ui_url: str, ui_backend_url: str, ui_api_key: str
) -> None:
    query, _, documents_text = EXAMPLES[0]
    documents = documents_text.splitlines()
    assert query == "如何实现Python中的异步爬虫" and len(documents) == 3

    fill_and_rank(page, ui_url, query, documents_text)
    page.locator("#rerankd-summary").get_by_text("3 of 3 documents").wait_for()
    rows = read_table(page)
    page.screenshot(path=save_artifact("ui-ranked.png"), full_page=True)

    api = api_rerank(ui_backend_url, ui_api_key, query, documents, DEFAULT_INSTRUCTION)
    assert_table_matches_api(rows, api, documents)
    summary = page.locator("#rerankd-summary").inner_text()
    assert f"{api['usage']['prompt_tokens']} prompt tokens" in summary
    assert "tiny-reranker" in summary and " ms" in summary
    # The key stays on the UI's server: not in the live DOM after a successful call either.
    assert ui_api_key not in page.content()


def test_browser_example_preset_and_top_n(page: Any, ui_url: str, ui_backend_url: str, ui_api_key: str) -> None:
    query, _, documents_text = EXAMPLES[1]
    label, instruction = INSTRUCTION_PRESETS[1]
    page.goto(ui_url + "/")
    page.get_by_text(query, exact=True).first.click()  # the Examples row fills the inputs
    page.wait_for_function("q => document.querySelector('#rerankd-query textarea').value === q", arg=query)
    assert page.locator("#rerankd-documents textarea").input_value() == documents_text
    page.locator("#rerankd-preset input").click()
    page.get_by_role("option", name=label).click()
    page.wait_for_function("i => document.querySelector('#rerankd-instruction textarea').value === i",
                           arg=instruction)
    page.locator("#rerankd-top-n input").fill("2")
    page.locator("#rerankd-rank").click()
    page.locator("#rerankd-summary").get_by_text("2 of 3 documents").wait_for()

    documents = documents_text.splitlines()
    api = api_rerank(ui_backend_url, ui_api_key, query, documents, instruction, top_n=2)
    assert_table_matches_api(read_table(page), api, documents)


def test_browser_shows_401_for_a_wrong_key(page: Any, ui_backend_url: str) -> None:
    wrong_key = "rk-wrong-key-0000-feedface"
    with running_ui(ui_backend_url, wrong_key) as url:
        fill_and_rank(page, url, "what is a reranker", "a model that orders documents\nan unrelated line")
        toast = page.locator(TOAST)
        toast.get_by_text("401").wait_for()
        inline = page.locator("#rerankd-summary")
        inline.get_by_text("Rerank failed (HTTP 401)").wait_for()  # also kept in the page, under the toast
        page.wait_for_timeout(500)  # let the toast finish fading in before the screenshot
        page.screenshot(path=save_artifact("ui-error-401.png"), full_page=True)
        for message in (toast.inner_text(), inline.inner_text()):
            assert "rejected the UI's API key" in message and "--api-key" in message
        assert wrong_key not in page.content()
        assert read_table(page) == []


def test_browser_shows_429_with_the_retry_after_wait_and_clears_the_old_ranking(
    page: Any, stub_ui_url: str
) -> None:
    fill_and_rank(page, stub_ui_url, "fast", "one\ntwo")
    page.locator("#rerankd-summary").get_by_text("2 of 2 documents").wait_for()
    assert len(read_table(page)) == 2

    page.locator("#rerankd-query textarea").fill("status 429")
    page.locator("#rerankd-rank").click()
    toast = page.locator(TOAST)
    toast.get_by_text("Rate limited (429)").wait_for()
    assert "Try again in 7 seconds" in toast.inner_text()
    assert "stub upstream says 429" in toast.inner_text()  # the service's own words are kept
    page.locator("#rerankd-summary").get_by_text("Try again in 7 seconds").wait_for()
    page.wait_for_function("() => document.querySelectorAll('#rerankd-table div[role=row]').length === 0")


def test_browser_through_a_reverse_proxy_under_a_root_path(
    page: Any, proxied_ui_url: str, ui_backend_url: str, ui_api_key: str
) -> None:
    requested: list[str] = []
    page.on("request", lambda request: requested.append(request.url))
    query, _, documents_text = EXAMPLES[1]
    fill_and_rank(page, proxied_ui_url, query, documents_text)
    page.locator("#rerankd-summary").get_by_text("3 of 3 documents").wait_for()

    documents = documents_text.splitlines()
    api = api_rerank(ui_backend_url, ui_api_key, query, documents, DEFAULT_INSTRUCTION)
    assert_table_matches_api(read_table(page), api, documents)
    # Every asset, config and queue call went through the proxy's prefix: none bypassed it, none left the site.
    outside = [u for u in requested if not u.startswith(proxied_ui_url + "/") and not u.startswith(("data:", "blob:"))]
    assert requested and outside == []


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


# ------------------------------------------------------------------------------- page and API config


def test_page_config_and_api_description_hold_no_api_key(ui_url: str, ui_api_key: str) -> None:
    for path in ("/", "/config", "/gradio_api/info"):
        response = httpx.get(ui_url + path, timeout=30)
        assert response.status_code == 200, path
        assert ui_api_key not in response.text, path
    info = httpx.get(ui_url + "/gradio_api/info", timeout=30).json()
    endpoint = info["named_endpoints"]["/" + API_NAME]
    assert [p["parameter_name"] for p in endpoint["parameters"]] == [
        "query", "instruction", "documents", "documents_file", "top_n"]
    assert endpoint["description"] == API_DESCRIPTION  # documented where API users look


# -------------------------------------------------------------------------------------- gradio_client


def test_gradio_client_ranks_like_the_api(ui_url: str, ui_backend_url: str, ui_api_key: str) -> None:
    query, _, documents_text = EXAMPLES[0]
    documents = documents_text.splitlines()
    table, summary, details = gradio_client(ui_url).predict(
        query, DEFAULT_INSTRUCTION, documents_text, None, 0, api_name="/" + API_NAME)

    api = api_rerank(ui_backend_url, ui_api_key, query, documents, DEFAULT_INSTRUCTION)
    assert table["headers"] == TABLE_HEADERS
    assert_table_matches_api(table["data"], api, documents)
    assert details["usage"] == api["usage"] and details["model"] == api["model"]
    assert "3 of 3 documents" in summary


def test_gradio_client_appends_an_uploaded_jsonl_file(
    tmp_path: Path, ui_url: str, ui_backend_url: str, ui_api_key: str
) -> None:
    from gradio_client import handle_file

    upload = tmp_path / "docs.jsonl"
    upload.write_text('{"text": "aiohttp runs many requests at once"}\n"a plain string document"\n', encoding="utf-8")
    query = "async crawler"
    table, _, details = gradio_client(ui_url).predict(
        query=query, instruction="", documents="requests blocks on every call", documents_file=handle_file(str(upload)),
        top_n=2, api_name="/" + API_NAME)

    documents = ["requests blocks on every call", "aiohttp runs many requests at once", "a plain string document"]
    api = api_rerank(ui_backend_url, ui_api_key, query, documents, DEFAULT_INSTRUCTION, top_n=2)
    assert details["documents"] == 3 and details["returned"] == 2
    assert_table_matches_api(table["data"], api, documents)


def test_gradio_client_through_the_reverse_proxy(proxied_ui_url: str) -> None:
    table, _, _ = gradio_client(proxied_ui_url + "/").predict(
        "capital of China", DEFAULT_INSTRUCTION, "Beijing\nParis", None, 0, api_name="/" + API_NAME)
    assert sorted(int(row[3]) for row in table["data"]) == [0, 1]


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (429, ["Rate limited (429)", "Try again in 7 seconds (Retry-After)"]),
        (503, ["overloaded or not ready yet (503)", "Try again in 3 seconds (Retry-After)"]),
        (413, ["Too much input (413)", "fewer or shorter documents"]),
    ],
)
def test_gradio_client_gets_a_clear_message_for_upstream_errors(
    stub_ui_url: str, status: int, expected: list[str]
) -> None:
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError) as caught:
        gradio_client(stub_ui_url).predict(f"status {status}", "", "one\ntwo", None, 0, api_name="/" + API_NAME)
    for text in [*expected, f"stub upstream says {status}"]:
        assert text in caught.value.message
    assert "stub-key" not in caught.value.message


def test_slow_upstream_neither_blocks_other_users_nor_hangs(stub_ui_url: str, stub_upstream: StubUpstream) -> None:
    from gradio_client.exceptions import AppError

    client = gradio_client(stub_ui_url)
    slow_calls = stub_upstream.slow_calls.count
    slow = client.submit("sleep 2.5 then rank", "", "a\nbbb", None, 0, api_name="/" + API_NAME)
    # The fast call goes only once the slow one is being served by the upstream (so it is "behind" it).
    assert stub_upstream.slow_calls.wait_for(slow_calls + 1, timeout=20), "the slow call never reached the upstream"
    fast_table, _, _ = client.predict("fast", "", "a\nbbb", None, 0, api_name="/" + API_NAME)
    assert not slow.done(), "a fast request waited behind a slow one"
    assert fast_table["data"][0][4] == "bbb"  # the stub ranks the longest document first
    assert slow.result(timeout=15)[0]["data"][0][4] == "bbb"

    started = time.monotonic()
    with pytest.raises(AppError) as caught:
        client.predict("sleep 30 hangs", "", "a", None, 0, api_name="/" + API_NAME)
    assert "within 4 s (timeout)" in caught.value.message
    assert time.monotonic() - started < 15


def test_uploaded_file_errors_name_the_line(tmp_path: Path, stub_ui_url: str) -> None:
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"text": "fine"}) + "\n{not json\n", encoding="utf-8")
    with pytest.raises(AppError) as caught:
        gradio_client(stub_ui_url).predict("q", "", "", handle_file(str(bad)), 0, api_name="/" + API_NAME)
    assert "line 2 is not valid JSON" in caught.value.message
