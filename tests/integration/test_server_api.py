"""The server's HTTP contract: shapes, ordering, limits and every error code that applies."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx
import pytest

from rerankd.server.settings import ServerSettings
from support import metric_value, running_server

QUERY = "what is the capital of France?"
DOCS = ["Paris is the capital of France.", "Bananas are yellow.", "Berlin is in Germany.", "France"]


def test_rerank_shape_order_top_n_and_usage(server_url: str) -> None:
    r = httpx.post(f"{server_url}/v1/rerank", json={"query": QUERY, "documents": DOCS, "top_n": 2})
    assert r.status_code == 200
    body = r.json()
    assert body["model"] == "tiny-reranker" and body["id"]
    assert len(body["results"]) == 2
    scores = [x["relevance_score"] for x in body["results"]]
    assert scores == sorted(scores, reverse=True)
    assert all(x["document"]["text"] == DOCS[x["index"]] for x in body["results"])
    assert body["usage"]["prompt_tokens"] == body["usage"]["total_tokens"] > 4 * 60


def test_return_documents_false_omits_document_and_objects_are_accepted(server_url: str) -> None:
    docs = [{"text": d, "id": i} for i, d in enumerate(DOCS)]
    r = httpx.post(f"{server_url}/v2/rerank", json={"query": QUERY, "documents": docs, "return_documents": False})
    assert r.status_code == 200
    assert all("document" not in x for x in r.json()["results"])
    assert sorted(x["index"] for x in r.json()["results"]) == [0, 1, 2, 3]


def test_identical_documents_tie_lower_index_first(server_url: str) -> None:
    r = httpx.post(f"{server_url}/rerank", json={"query": QUERY, "documents": ["same", "same", "same"]})
    assert [x["index"] for x in r.json()["results"]] == [0, 1, 2]


def test_request_id_is_echoed_or_created(server_url: str) -> None:
    r = httpx.get(f"{server_url}/health", headers={"X-Request-ID": "abc-123"})
    assert r.headers["x-request-id"] == "abc-123"
    r = httpx.post(f"{server_url}/v1/rerank", json={"query": QUERY, "documents": DOCS})
    assert len(r.headers["x-request-id"]) >= 16
    assert r.json()["id"] == r.headers["x-request-id"]


def test_models_info_health_ready_metrics_docs(server_url: str) -> None:
    models = httpx.get(f"{server_url}/v1/models").json()
    assert models["object"] == "list" and models["data"][0]["id"] == "tiny-reranker"
    info = httpx.get(f"{server_url}/info").json()
    assert info["max_model_len"] == 256 and info["backend"] == "torch" and info["dtype"] == "float32"
    assert httpx.get(f"{server_url}/health").status_code == 200
    assert httpx.get(f"{server_url}/ready").status_code == 200
    metrics = httpx.get(f"{server_url}/metrics").text
    assert "rerankd_requests_total" in metrics and "rerankd_batch_size_bucket" in metrics
    assert httpx.get(f"{server_url}/docs").status_code == 200
    spec = httpx.get(f"{server_url}/openapi.json").json()
    assert {"/v1/rerank", "/v2/rerank", "/rerank", "/v1/score"} <= set(spec["paths"])


@pytest.mark.parametrize(
    ("body", "status", "needle"),
    [
        ({"query": QUERY, "documents": []}, 422, "documents"),
        ({"query": QUERY}, 422, "documents"),
        ({"documents": DOCS}, 422, "query"),
        ({"query": QUERY, "documents": DOCS, "top_n": 0}, 422, "top_n"),
        ({"query": QUERY, "documents": DOCS, "top_n": -3}, 422, "top_n"),
        ({"query": QUERY, "documents": "not a list"}, 422, "documents"),
        ({"query": QUERY, "documents": [1, 2]}, 422, "documents"),
        ({"query": QUERY, "documents": DOCS, "max_tokens_per_doc": 0}, 422, "max_tokens_per_doc"),
        ({"query": QUERY, "documents": ["d"] * 51}, 413, "max-documents"),
        ({"query": "long query " * 400, "documents": DOCS}, 400, "query"),
    ],
)
def test_bad_input_gets_a_clear_error(server_url: str, body: dict, status: int, needle: str) -> None:
    r = httpx.post(f"{server_url}/v1/rerank", json=body)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert needle in error["message"] or needle == error.get("field")
    assert error["code"] == status
    assert r.json()["detail"] == error["message"]  # Jina-style clients read the top-level `detail`


@pytest.mark.parametrize("raw", [b"{not json", b"", b"\xff\xfe\x00", b"[1,2,3]", b"null", b'"str"'])
def test_non_json_or_wrong_root_is_400_or_422(server_url: str, raw: bytes) -> None:
    r = httpx.post(f"{server_url}/v1/rerank", content=raw, headers={"content-type": "application/json"})
    assert r.status_code in (400, 422), r.text
    assert "message" in r.json()["error"]


def test_deeply_nested_json_is_rejected_cleanly(server_url: str) -> None:
    raw = b'{"query": "q", "documents": ' + b"[" * 5000 + b"]" * 5000 + b"}"
    r = httpx.post(f"{server_url}/v1/rerank", content=raw, headers={"content-type": "application/json"})
    assert r.status_code in (400, 422)


def test_body_over_the_cap_is_413(server_url: str) -> None:
    big = {"query": QUERY, "documents": ["x" * 300_000]}
    r = httpx.post(f"{server_url}/v1/rerank", json=big)
    assert r.status_code == 413 and "bytes" in r.json()["error"]["message"]


def test_body_over_the_cap_without_content_length_is_413(server_url: str) -> None:
    def chunks():
        yield b'{"query": "q", "documents": ["'
        for _ in range(40):
            yield b"y" * 10_000
        yield b'"]}'

    r = httpx.post(f"{server_url}/v1/rerank", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413


def test_score_dialect_errors(server_url: str) -> None:
    r = httpx.post(f"{server_url}/v1/score", json={"text_1": ["a", "b"], "text_2": ["x", "y", "z"]})
    assert r.status_code == 422 and "text_1" in r.json()["error"]["message"]
    r = httpx.post(f"{server_url}/v1/score", json={"text_1": "a"})
    assert r.status_code == 422
    r = httpx.post(f"{server_url}/v1/score", json={"queries": ["a", "b"], "documents": ["x", "y"]})
    assert r.status_code == 200 and len(r.json()["data"]) == 2


def test_tei_truncate_false_rejects_a_too_long_text(server_url: str) -> None:
    long = "word " * 2000
    r = httpx.post(f"{server_url}/rerank", json={"query": "q", "texts": ["ok", long], "truncate": False})
    assert r.status_code == 422 and r.json()["error_type"] == "Validation"  # TEI's status and shape
    assert "texts[1]" in r.json()["error"]
    r = httpx.post(f"{server_url}/rerank", json={"query": "q", "texts": ["ok", long], "truncate": True})
    assert r.status_code == 200


def test_unknown_route_and_method_are_json_errors(server_url: str) -> None:
    assert httpx.get(f"{server_url}/nope").status_code == 404
    r = httpx.get(f"{server_url}/v1/rerank")
    assert r.status_code == 405 and r.json()["error"]["code"] == 405


def test_api_key_guards_every_route_but_probes(tiny_model_dir: Path) -> None:
    settings = ServerSettings(model=str(tiny_model_dir), device="cpu", dtype="float32", api_key="s3cret")
    with running_server(settings) as url:
        body = {"query": "q", "documents": ["a"]}
        assert httpx.post(f"{url}/v1/rerank", json=body).status_code == 401
        assert httpx.post(f"{url}/v1/rerank", json=body, headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert httpx.post(f"{url}/v1/rerank", json=body, headers={"Authorization": "s3cret"}).status_code == 401
        ok = httpx.post(f"{url}/v1/rerank", json=body, headers={"Authorization": "Bearer s3cret"})
        assert ok.status_code == 200
        for route in ("/v1/models", "/info", "/docs", "/openapi.json"):
            assert httpx.get(f"{url}{route}").status_code == 401, route
        for route in ("/health", "/ready", "/metrics"):
            assert httpx.get(f"{url}{route}").status_code == 200, route


async def test_concurrent_requests_are_batched_together(server_url: str) -> None:
    async with httpx.AsyncClient(timeout=60) as client:
        before = _batch_requests_sum(await client.get(f"{server_url}/metrics"))
        singles = [await client.post(f"{server_url}/v1/rerank", json={"query": f"q{i}", "documents": DOCS})
                   for i in range(3)]
        tasks = [client.post(f"{server_url}/v1/rerank", json={"query": f"q{i}", "documents": DOCS})
                 for i in range(20)]
        answers = await asyncio.gather(*tasks)
        after = await client.get(f"{server_url}/metrics")
    assert all(a.status_code == 200 for a in answers)
    # Each request alone gives the same scores as inside a shared batch.
    for i in range(3):
        alone = {x["index"]: x["relevance_score"] for x in singles[i].json()["results"]}
        shared = {x["index"]: x["relevance_score"] for x in answers[i].json()["results"]}
        assert all(abs(alone[k] - shared[k]) < 1e-5 for k in alone)
    # Batches mixing several requests happened: the histogram saw a batch with > 1 request.
    assert _max_observed_batch_requests(after.text) > 1
    assert _batch_requests_sum(after) > before


def _batch_requests_sum(response: httpx.Response) -> float:
    for line in response.text.splitlines():
        if line.startswith("rerankd_batch_requests_sum"):
            return float(line.split()[-1])
    return 0.0


def _max_observed_batch_requests(text: str) -> float:
    """Smallest bucket bound `le` whose cumulative count equals the total: an upper bound on the max."""
    buckets = []
    for line in text.splitlines():
        if line.startswith("rerankd_batch_requests_bucket"):
            le = line.split('le="')[1].split('"')[0]
            buckets.append((float("inf") if le == "+Inf" else float(le), float(line.split()[-1])))
    total = buckets[-1][1]
    for le, count in buckets:
        if count == total:
            return le
    return 0.0


def test_full_queue_answers_503_with_retry_after(tiny_model_dir: Path) -> None:
    settings = ServerSettings(model=str(tiny_model_dir), device="cpu", dtype="float32", max_queue=1,
                              max_batch_tokens=256)

    async def burst(url: str) -> list[httpx.Response]:
        docs = ["a fairly long document about many things " * 10] * 40
        async with httpx.AsyncClient(timeout=120) as client:
            return await asyncio.gather(*(client.post(f"{url}/v1/rerank", json={"query": f"q{i}", "documents": docs})
                                          for i in range(12)))

    with running_server(settings) as url:
        answers = asyncio.run(burst(url))
    statuses = [a.status_code for a in answers]
    assert 503 in statuses and 200 in statuses
    rejected = next(a for a in answers if a.status_code == 503)
    assert int(rejected.headers["retry-after"]) >= 1
    assert "queue" in rejected.json()["error"]["message"]


def test_error_bodies_never_carry_stack_traces(server_url: str) -> None:
    r = httpx.post(f"{server_url}/v1/rerank", content=json.dumps({"query": 5, "documents": {"a": 1}}),
                   headers={"content-type": "application/json"})
    assert r.status_code == 422
    assert "Traceback" not in r.text and "File \"" not in r.text


def test_max_batch_tokens_is_the_budget_the_batcher_uses(tiny_model_dir: Path) -> None:
    """--max-batch-tokens below the model's length limit still cuts batches (it used to be raised to that
    limit, 32k, so every request ran as one batch whatever the flag said); scores do not depend on it."""
    docs = [f"document {i} " + "word " * (10 + 9 * i) for i in range(12)]
    scores, batches = {}, {}
    for budget in (400, 100_000):
        settings = ServerSettings(model=str(tiny_model_dir), device="cpu", dtype="float32", max_batch_tokens=budget)
        with running_server(settings) as url:
            answer = httpx.post(f"{url}/v1/rerank", json={"query": "which document", "documents": docs}, timeout=60)
            assert answer.status_code == 200
            scores[budget] = {r["index"]: r["relevance_score"] for r in answer.json()["results"]}
            batches[budget] = metric_value(url, "rerankd_batch_size_count")
    assert batches[100_000] == 1
    assert batches[400] >= 4
    assert max(abs(scores[400][i] - scores[100_000][i]) for i in range(len(docs))) < 1e-5
