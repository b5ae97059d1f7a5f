"""Admission before work on a real server: bodies too big to validate or to score are refused before the work.

Each refusal must come fast, name the flag to change, and leave the event loop free: a concurrent
``/health`` keeps answering while an oversized body is judged.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from rerankd.server.settings import ServerSettings
from support import metric_value, running_server

MAX_REQUEST_TOKENS = 3000
MAX_REQUEST_CHARS = 200_000


@pytest.fixture(scope="module")
def url(tiny_model_dir: Path) -> Iterator[str]:
    settings = ServerSettings(model=str(tiny_model_dir), device="cpu", dtype="float32", max_model_len=256,
                              max_request_tokens=MAX_REQUEST_TOKENS, max_request_chars=MAX_REQUEST_CHARS)
    with running_server(settings) as base:
        yield base


class HealthProbe:
    """Calls ``/health`` in a loop from a thread; records the slowest answer."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.latencies: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.Client(timeout=30) as client:
            while not self._stop.is_set():
                started = time.perf_counter()
                assert client.get(f"{self.url}/health").status_code == 200
                self.latencies.append(time.perf_counter() - started)

    def __enter__(self) -> HealthProbe:
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self.latencies:  # the probe answers before the request under test is sent
            assert time.monotonic() < deadline, "/health never answered"
            time.sleep(0.01)
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)


def post(url: str, path: str, body: object) -> tuple[httpx.Response, float]:
    started = time.perf_counter()
    response = httpx.post(f"{url}{path}", content=json.dumps(body), timeout=60)
    return response, time.perf_counter() - started


def test_200k_empty_documents_are_refused_in_milliseconds_while_health_answers(url: str) -> None:
    body = {"query": "q", "documents": [{}] * 200_000}  # 0.6 MB: validating it took 4.4 s on the event loop
    with HealthProbe(url) as probe:
        response, seconds = post(url, "/v1/rerank", body)
        served = len(probe.latencies)
    assert response.status_code == 413, response.text[:300]
    error = response.json()["error"]
    assert error["field"] == "documents" and "--max-documents" in error["message"]
    assert seconds < 1.0
    assert served > 1 and max(probe.latencies) < 0.5


@pytest.mark.parametrize(("path", "body", "field"), [
    ("/rerank", {"query": "q", "texts": ["a"] * 1001}, "texts"),
    ("/v1/score", {"text_1": "q", "text_2": ["a"] * 1001}, "text_2"),
    ("/v1/rerank", {"query": "q", "documents": [{"text": "a", "tags": [1]}] * 1000 + ["b"]}, "documents"),
])
def test_every_dialect_counts_its_documents_before_validation(url: str, path: str, body: object, field: str) -> None:
    response, _ = post(url, path, body)
    if isinstance(body, dict) and "texts" in body:  # TEI's body gets TEI's answer: 422, {"error", "error_type"}
        assert response.status_code == 422, response.text[:300]
        assert response.json()["error_type"] == "Validation" and f"`{field}`" in response.json()["error"]
        return
    assert response.status_code == 413, response.text[:300]
    assert response.json()["error"]["field"] == field


def test_metadata_that_multiplies_json_values_is_refused(url: str) -> None:
    body = {"query": "q", "documents": [{"text": "a", "meta": [0] * 100}] * 200}  # 20k values in 200 documents
    response, seconds = post(url, "/v1/rerank", body)
    assert response.status_code == 413 and "JSON values" in response.json()["error"]["message"]
    assert seconds < 1.0


def test_characters_over_max_request_chars_are_refused_before_tokenizing(url: str) -> None:
    pairs = metric_value(url, "rerankd_pairs_total")
    body = {"query": "q", "documents": ["word " * 1000] * 41}  # 205k characters
    response, _ = post(url, "/v1/rerank", body)
    assert response.status_code == 413, response.text[:300]
    error = response.json()["error"]
    assert "--max-request-chars" in error["message"] and error["field"] == "documents"
    assert metric_value(url, "rerankd_pairs_total") == pairs


def test_prompt_tokens_over_max_request_tokens_are_refused_before_any_forward_pass(url: str) -> None:
    pairs = metric_value(url, "rerankd_pairs_total")
    # 20 distinct documents, each cut to the 256-token model length: ~5000 prompt tokens, over the 3000 allowed.
    body = {"query": "q", "documents": [f"doc {i} " + "word " * 400 for i in range(20)]}
    response, _ = post(url, "/v1/rerank", body)
    assert response.status_code == 413, response.text[:300]
    error = response.json()["error"]
    assert "--max-request-tokens" in error["message"] and str(MAX_REQUEST_TOKENS) in error["message"]
    assert metric_value(url, "rerankd_pairs_total") == pairs  # nothing reached the model
    # The same documents, fewer of them, are served; and the score dialect counts every query's tokens.
    small, _ = post(url, "/v1/rerank", {**body, "documents": body["documents"][:5]})
    assert small.status_code == 200 and small.json()["usage"]["prompt_tokens"] <= MAX_REQUEST_TOKENS
    queries, _ = post(url, "/v1/score", {"text_1": [f"q{i}" for i in range(20)], "text_2": body["documents"]})
    assert queries.status_code == 413 and "--max-request-tokens" in queries.json()["error"]["message"]


def test_nesting_and_non_json_keep_their_answers(url: str) -> None:
    deep = httpx.post(f"{url}/v1/rerank", content=b'{"query": "q", "documents": ' + b"[" * 100 + b"]" * 100 + b"}")
    assert deep.status_code == 400 and "nested" in deep.json()["error"]["message"]
    broken = httpx.post(f"{url}/v1/rerank", content=b'{"query": "q", "documents": ["a",')
    assert broken.status_code == 400 and "not valid JSON" in broken.json()["error"]["message"]
    invalid, _ = post(url, "/v1/rerank", {"query": "q", "documents": [{}]})
    assert invalid.status_code == 422 and invalid.json()["error"]["field"].startswith("documents.0")
