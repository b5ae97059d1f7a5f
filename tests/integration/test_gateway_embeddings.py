"""The gateway's embedding routes against real processes: a real gateway in front of two real embedding
``rerankd serve`` replicas on the tiny random embedder (and a reranker pool on a recording replica).

What is checked: routing by model name to the embedding pool (lenient default, strict 404, a rerank-only
gateway's 404), a split input list equal to one replica's own answer (same vectors, same order) in the three
dialects, the ledger row with the replicas' input tokens, and the 401 / 429 / 413 paths.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import openai
import pytest

from support import Proc, spawn_gateway, spawn_replica, wait_until

pytestmark = pytest.mark.timeout(600)

ADMIN = "embed-gateway-admin"
EMBEDDER = "tiny-embedder"
TEXTS = ["the capital of France is Paris", "Berlin is in Germany", "def add(a, b): return a + b",
         "北京是中国的首都", "a fifth, rather longer input about rivers, mountains and the sea", "six"]


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def make_key(gateway: str, name: str, **fields: Any) -> str:
    created = httpx.post(f"{gateway}/admin/keys", json={"name": name, **fields}, headers=bearer(ADMIN))
    assert created.status_code == 201, created.text
    return str(created.json()["key"])


def gateway_proc(tmp: Path, *flags: str) -> Proc:
    return spawn_gateway(tmp, [], "--database-url", f"sqlite:///{tmp / 'gw.db'}", "--admin-key", ADMIN,
                         "--health-interval", "0.2", *flags).wait_ready(120)


def ledger(tmp: Path) -> list[tuple[str, str, int, int, int, str | None]]:
    with sqlite3.connect(tmp / "gw.db") as db:
        return list(db.execute(
            "SELECT route, model, status, documents, tokens, upstream FROM usage_records ORDER BY id"))


@pytest.fixture(scope="module")
def embedders(embed_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Proc]]:
    logs = tmp_path_factory.mktemp("embed-replicas")
    procs = [spawn_replica(embed_model_dir, logs, "--served-model-name", EMBEDDER, "--compile", "off")
             for _ in range(2)]
    try:
        for proc in procs:
            proc.wait_ready(400)
        yield procs
    finally:
        for proc in procs:
            proc.stop()


@pytest.fixture(scope="module")
def stack(embedders: list[Proc], tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """A gateway with an embedding pool of both replicas (split above 2 inputs) and a reranker pool."""
    tmp = tmp_path_factory.mktemp("embed-gateway")
    # The reranker pool's replica is a real embedding server too: routing decides, the replica never sees
    # a request of the wrong task (it would answer 400 if it did).
    proc = gateway_proc(tmp, "--pool", f"embed:{EMBEDDER}={embedders[0].url},{embedders[1].url}",
                        "--model-alias", f"text-embedding-3-small={EMBEDDER}", "--split-threshold", "2")
    try:
        yield proc.url, tmp
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def key(stack: tuple[str, Path]) -> str:
    return make_key(stack[0], "embedder")


def direct(replica: Proc, path: str, body: dict[str, Any]) -> httpx.Response:
    reply = httpx.post(replica.url + path, json=body, timeout=120)
    assert reply.status_code == 200, reply.text
    return reply


def test_openai_sdk_split_across_replicas_equals_one_replicas_answer_and_is_billed_its_tokens(
        stack: tuple[str, Path], key: str, embedders: list[Proc]) -> None:
    url, tmp = stack
    reference = direct(embedders[0], "/v1/embeddings", {"input": TEXTS}).json()
    client = openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=120)
    for asked in (EMBEDDER, "text-embedding-3-small", "some-vendor-name"):  # name, alias, lenient default
        answer = client.embeddings.create(model=asked, input=TEXTS, encoding_format="float")
        assert [d.index for d in answer.data] == list(range(len(TEXTS)))
        np.testing.assert_allclose([d.embedding for d in answer.data],
                                   [d["embedding"] for d in reference["data"]], rtol=0, atol=1e-5)
        assert answer.usage.prompt_tokens == reference["usage"]["prompt_tokens"]
    wait_until(lambda: len(ledger(tmp)) >= 3, 15, "three usage rows")
    for route, model, status, documents, tokens, upstream in ledger(tmp)[:3]:
        assert (route, model, status, documents) == ("/v1/embeddings", EMBEDDER, 200, len(TEXTS))
        assert tokens == reference["usage"]["prompt_tokens"] > 0
        assert upstream is not None  # the parts went to both replicas
        assert {embedders[0].url, embedders[1].url} == set(upstream.split(","))


def test_tei_and_cohere_splits_keep_the_order_and_sum_the_tokens(
        stack: tuple[str, Path], key: str, embedders: list[Proc]) -> None:
    url, _ = stack
    tei_ref = direct(embedders[1], "/embed", {"inputs": TEXTS})
    tei = httpx.post(f"{url}/embed", json={"inputs": TEXTS}, headers=bearer(key), timeout=120)
    assert tei.status_code == 200, tei.text
    np.testing.assert_allclose(tei.json(), tei_ref.json(), rtol=0, atol=1e-5)
    assert tei.headers["x-prompt-tokens"] == tei_ref.headers["x-prompt-tokens"]

    body = {"model": EMBEDDER, "texts": TEXTS, "input_type": "search_query", "embedding_types": ["float", "int8"]}
    cohere_ref = direct(embedders[0], "/v2/embed", body).json()
    cohere = httpx.post(f"{url}/v2/embed", json=body, headers=bearer(key), timeout=120)
    assert cohere.status_code == 200, cohere.text
    got = cohere.json()
    np.testing.assert_allclose(got["embeddings"]["float"], cohere_ref["embeddings"]["float"], rtol=0, atol=1e-5)
    assert len(got["embeddings"]["int8"]) == len(TEXTS)
    assert got["texts"] == TEXTS
    assert got["meta"]["billed_units"] == cohere_ref["meta"]["billed_units"]


def test_cohere_v1_split_keeps_the_order_equals_v2_and_is_billed_its_tokens(
        stack: tuple[str, Path], key: str, embedders: list[Proc]) -> None:
    """POST /v1/embed (LangChain's CohereEmbeddings) through the gateway: six texts split across both replicas
    (threshold 2), merged back in order, in both of v1's answer shapes; the ledger holds the replicas' tokens."""
    url, tmp = stack
    floats_body = {"model": "embed-english-v3.0", "texts": TEXTS, "input_type": "search_query"}
    reference = direct(embedders[1], "/v1/embed", floats_body).json()
    v2 = direct(embedders[0], "/v2/embed", {**floats_body, "embedding_types": ["float"]}).json()
    reply = httpx.post(f"{url}/v1/embed", json=floats_body, headers=bearer(key), timeout=120)
    assert reply.status_code == 200, reply.text
    got = reply.json()
    assert got["response_type"] == "embeddings_floats" and got["texts"] == TEXTS
    assert isinstance(got["embeddings"], list)
    np.testing.assert_allclose(got["embeddings"], reference["embeddings"], rtol=0, atol=1e-6)
    np.testing.assert_allclose(got["embeddings"], v2["embeddings"]["float"], rtol=0, atol=1e-6)
    assert got["meta"]["billed_units"] == reference["meta"]["billed_units"]
    tokens = reference["meta"]["billed_units"]["input_tokens"]

    typed_body = {**floats_body, "embedding_types": ["int8", "binary", "float"]}
    typed_ref = direct(embedders[0], "/v2/embed", typed_body).json()
    typed = httpx.post(f"{url}/v1/embed", json=typed_body, headers=bearer(key), timeout=120)
    assert typed.status_code == 200, typed.text
    by_type = typed.json()
    assert by_type["response_type"] == "embeddings_by_type"
    assert list(by_type["embeddings"]) == ["int8", "binary", "float"]
    assert by_type["embeddings"]["int8"] == typed_ref["embeddings"]["int8"]
    assert by_type["embeddings"]["binary"] == typed_ref["embeddings"]["binary"]
    bad = httpx.post(f"{url}/v1/embed", json={"texts": ["x"], "embedding_types": ["base64"]}, headers=bearer(key),
                     timeout=60)
    assert bad.status_code == 422 and "embedding_types" in bad.text and "ubinary" in bad.text

    def v1_rows() -> list[tuple[str, str, int, int, int, str | None]]:
        return [row for row in ledger(tmp) if row[0] == "/v1/embed"]

    wait_until(lambda: len(v1_rows()) >= 3, 15, "three /v1/embed usage rows")
    first, second, refused = v1_rows()[:3]
    for route, model, status, documents, billed, upstream in (first, second):
        assert (route, model, status, documents, billed) == ("/v1/embed", EMBEDDER, 200, len(TEXTS), tokens)
        assert upstream is not None and {embedders[0].url, embedders[1].url} == set(upstream.split(","))
    assert refused[2] == 422 and refused[4] == 0


def test_a_name_of_another_task_and_a_gateway_without_an_embedding_pool_are_404s(
        stack: tuple[str, Path], key: str, embedders: list[Proc], tmp_path: Path) -> None:
    url, _ = stack
    wrong = httpx.post(f"{url}/v1/rerank", json={"model": EMBEDDER, "query": "q", "documents": ["d"]},
                       headers=bearer(key), timeout=60)
    assert wrong.status_code == 404 and "embedding model" in wrong.json()["error"]["message"]
    rerank_only = gateway_proc(tmp_path, "--pool", f"tiny-reranker={embedders[0].url}", "--strict-model-names")
    try:
        other = make_key(rerank_only.url, "r")
        for path, body in (("/v1/embeddings", {"input": "x"}), ("/embed", {"inputs": "x"}),
                           ("/v2/embed", {"texts": ["x"]}), ("/v1/embed", {"texts": ["x"]})):
            reply = httpx.post(rerank_only.url + path, json=body, headers=bearer(other), timeout=60)
            assert reply.status_code == 404, (path, reply.text)
            assert "serves no embed model" in reply.json()["error"]["message"]
            assert "tiny-reranker" in reply.json()["error"]["message"]
    finally:
        rerank_only.stop()


def test_strict_mode_lists_the_embedding_models_served(embedders: list[Proc], tmp_path: Path) -> None:
    proc = gateway_proc(tmp_path, "--pool", f"embed:{EMBEDDER}={embedders[0].url}", "--strict-model-names")
    try:
        k = make_key(proc.url, "strict")
        unknown = httpx.post(f"{proc.url}/v1/embeddings", json={"model": "nope", "input": "x"}, headers=bearer(k))
        assert unknown.status_code == 404
        assert f"embed models served: {EMBEDDER}" in unknown.json()["error"]["message"]
        known = httpx.post(f"{proc.url}/v1/embeddings", json={"model": EMBEDDER, "input": "x"}, headers=bearer(k),
                           timeout=60)
        assert known.status_code == 200, known.text
    finally:
        proc.stop()


def test_keys_and_limits_hold_on_the_embedding_routes(stack: tuple[str, Path], key: str,
                                                      embedders: list[Proc]) -> None:
    url, _ = stack
    for path, body in (("/v1/embeddings", {"input": "x"}), ("/embed", {"inputs": "x"}),
                       ("/v2/embed", {"texts": ["x"]}), ("/v1/embed", {"texts": ["x"]})):
        assert httpx.post(url + path, json=body).status_code == 401
        assert httpx.post(url + path, json=body, headers=bearer("rk-wrong")).status_code == 401
    once = make_key(url, "once-a-minute", rpm=1)
    first = httpx.post(f"{url}/v1/embeddings", json={"input": "x"}, headers=bearer(once), timeout=60)
    assert first.status_code == 200, first.text
    second = httpx.post(f"{url}/embed", json={"inputs": "x"}, headers=bearer(once), timeout=60)
    assert second.status_code == 429 and "requests per minute" in second.json()["error"]["message"]
    assert int(second.headers["retry-after"]) >= 1
    # The token estimate is an upper bound from the input sizes (its bytes plus a template of 16), settled to
    # what the replica reports: a budget of estimate + real - 1 admits one such request, then not a second.
    text = "rivers and mountains " * 10
    estimate, real = len(text) + 16, direct(embedders[0], "/v1/embeddings", {"input": [text]}).json()["usage"][
        "prompt_tokens"]
    tpm = estimate + real - 1
    small = make_key(url, "small-tpm", tpm=tpm)
    big = httpx.post(f"{url}/v1/embeddings", json={"input": [text * 3]}, headers=bearer(small), timeout=60)
    assert big.status_code == 413 and f"{tpm} tokens per minute" in big.json()["error"]["message"]
    fits = httpx.post(f"{url}/v1/embeddings", json={"input": [text]}, headers=bearer(small), timeout=60)
    assert fits.status_code == 200, fits.text
    assert fits.headers["x-ratelimit-remaining-tokens"] == str(tpm - real)  # settled to the replica's count
    again = httpx.post(f"{url}/v1/embeddings", json={"input": [text]}, headers=bearer(small), timeout=60)
    assert again.status_code == 429 and "token limit" in again.json()["error"]["message"]
    metrics = httpx.get(f"{url}/metrics", headers=bearer(ADMIN), timeout=10).text
    assert 'route="/v1/embeddings"' in metrics and 'route="/embed"' in metrics  # labelled, not "other"


def test_a_replica_that_dies_is_failed_over_within_the_embedding_pool(
        embed_model_dir: Path, embedders: list[Proc], tmp_path: Path) -> None:
    """A replica killed after the gateway saw it ready (no probe runs meanwhile): the requests that pick it are
    retried on the pool's live replica, whole and split."""
    doomed = spawn_replica(embed_model_dir, tmp_path, "--served-model-name", EMBEDDER, "--compile", "off")
    doomed.wait_ready(400)
    proc = gateway_proc(tmp_path, "--pool", f"embed:{EMBEDDER}={doomed.url},{embedders[0].url}",
                        "--split-threshold", "1", "--health-interval", "3600")
    try:
        k = make_key(proc.url, "failover")
        reference = direct(embedders[0], "/embed", {"inputs": TEXTS[:3]}).json()
        doomed.stop()
        for _ in range(4):
            reply = httpx.post(f"{proc.url}/embed", json={"inputs": TEXTS[:3]}, headers=bearer(k), timeout=120)
            assert reply.status_code == 200, reply.text
            np.testing.assert_allclose(reply.json(), reference, rtol=0, atol=1e-5)
        wait_until(lambda: len(ledger(tmp_path)) >= 4, 15, "four usage rows")
        assert all(upstream is not None and doomed.url not in upstream for *_, upstream in ledger(tmp_path))
    finally:
        proc.stop()
        doomed.stop()
