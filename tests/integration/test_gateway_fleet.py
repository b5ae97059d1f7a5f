"""The gateway in front of three real ``rerankd serve`` replicas: same scores, failover, split, ejection.

Replicas and the gateway are real processes on 127.0.0.1; the replica that fails on demand is a real
HTTP proxy in front of a real replica.
"""

from __future__ import annotations

import asyncio
import re
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from fault_proxy import FlakyProxy
from support import Fleet, free_port, spawn_gateway

pytestmark = pytest.mark.timeout(240)

ADMIN = "admin-secret-for-tests"
DOCS = [f"document {i}: " + ("apples and pears " * (i % 5 + 1)) for i in range(40)]


def admin_headers() -> dict[str, str]:
    return {"Authorization": f"Bearer {ADMIN}"}


@pytest.fixture(scope="module")
def gateway(fleet: Fleet, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A gateway process in front of the fleet; splits requests of more than 8 documents."""
    tmp = tmp_path_factory.mktemp("gateway")
    proc = spawn_gateway(tmp, fleet.urls, "--database-url", f"sqlite:///{tmp / 'gw.db'}", "--admin-key", ADMIN,
                         "--split-threshold", "8", "--health-interval", "0.3", "--attempt-timeout", "20")
    try:
        yield proc.wait_ready().url
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def user_key(gateway: str) -> str:
    response = httpx.post(f"{gateway}/admin/keys", json={"name": "fleet-user"}, headers=admin_headers())
    assert response.status_code == 201, response.text
    return response.json()["key"]


def rerank(url: str, key: str | None, **body: object) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.post(f"{url}/v1/rerank", json=body, headers=headers, timeout=60)


def pairs_scored(url: str) -> float:
    text = httpx.get(f"{url}/metrics").text
    match = re.search(r"^rerankd_pairs_total (\S+)$", text, re.M)
    return float(match.group(1)) if match else 0.0


def test_scores_through_the_gateway_equal_a_replicas(fleet: Fleet, gateway: str, user_key: str) -> None:
    body = {"query": "which fruit is red", "documents": DOCS[:6], "top_n": 4, "instruction": "Find fruit"}
    direct = rerank(fleet.urls[0], None, **body).json()
    through = rerank(gateway, user_key, **body)
    assert through.status_code == 200, through.text
    got = through.json()
    assert [r["index"] for r in got["results"]] == [r["index"] for r in direct["results"]]
    assert [r["document"] for r in got["results"]] == [r["document"] for r in direct["results"]]
    for mine, theirs in zip(got["results"], direct["results"], strict=True):
        assert mine["relevance_score"] == pytest.approx(theirs["relevance_score"], abs=1e-6)
    assert got["usage"] == direct["usage"]
    assert got["id"] == through.headers["x-request-id"]
    assert "x-ratelimit-limit" not in through.headers  # an unlimited key has no limit headers


def test_a_large_request_is_split_over_every_replica_and_merged_exactly(
        fleet: Fleet, gateway: str, user_key: str) -> None:
    body = {"query": "pears", "documents": DOCS, "top_n": 15, "raw_scores": True}
    direct = rerank(fleet.urls[0], None, **body).json()
    before = [pairs_scored(u) for u in fleet.urls]
    through = rerank(gateway, user_key, **body)
    assert through.status_code == 200, through.text
    after = [pairs_scored(u) for u in fleet.urls]
    assert all(a > b for a, b in zip(after, before, strict=True)), "every replica took a part"
    assert sum(after) - sum(before) == len(DOCS)
    got = through.json()
    assert [r["index"] for r in got["results"]] == [r["index"] for r in direct["results"]]
    for mine, theirs in zip(got["results"], direct["results"], strict=True):
        assert mine["relevance_score"] == pytest.approx(theirs["relevance_score"], abs=1e-5)
        assert mine["document"]["text"] == DOCS[mine["index"]]
    assert got["usage"] == direct["usage"]
    # Without top_n every document comes back once, in the server's order.
    full = rerank(gateway, user_key, query="pears", documents=DOCS, return_documents=False).json()
    assert sorted(r["index"] for r in full["results"]) == list(range(len(DOCS)))
    assert "document" not in full["results"][0]


def test_a_chunked_request_is_split_and_keeps_each_documents_best_chunk(
        fleet: Fleet, gateway: str, user_key: str) -> None:
    long = [f"document {i}: " + " ".join(f"pears{i} word{j}" for j in range(40 + 5 * i)) for i in range(24)]
    body = {"query": "pears", "documents": long, "top_n": 9, "raw_scores": True, "max_tokens_per_doc": 40,
            "max_chunks_per_doc": 5, "chunk_overlap_tokens": 4}
    direct = rerank(fleet.urls[0], None, **body).json()
    before = [pairs_scored(u) for u in fleet.urls]
    through = rerank(gateway, user_key, **body)
    assert through.status_code == 200, through.text
    after = [pairs_scored(u) for u in fleet.urls]
    assert all(a > b for a, b in zip(after, before, strict=True)), "every replica took a part"
    got = through.json()
    assert [r["index"] for r in got["results"]] == [r["index"] for r in direct["results"]]
    assert [r["chunk_index"] for r in got["results"]] == [r["chunk_index"] for r in direct["results"]]
    assert any(r["chunk_index"] > 0 for r in got["results"])
    for mine, theirs in zip(got["results"], direct["results"], strict=True):
        assert mine["relevance_score"] == pytest.approx(theirs["relevance_score"], abs=1e-5)
    assert got["usage"] == direct["usage"]  # every chunk billed, on whichever replica


def test_tei_truncation_direction_passes_through(fleet: Fleet, gateway: str, user_key: str) -> None:
    auth = {"Authorization": f"Bearer {user_key}"}
    body = {"query": "q", "texts": ["word " * 600], "raw_scores": True, "truncation_direction": "Left"}
    through = httpx.post(f"{gateway}/rerank", json=body, headers=auth)
    assert through.status_code == 200, through.text
    direct = httpx.post(f"{fleet.urls[0]}/rerank", json=body).json()
    assert through.json()[0]["score"] == pytest.approx(direct[0]["score"], abs=1e-6)
    bad = httpx.post(f"{gateway}/rerank", json={**body, "truncation_direction": "Up"}, headers=auth)
    # A TEI body's errors come in TEI's shape through the gateway, as from a server.
    assert bad.status_code == 422 and bad.json()["error_type"] == "Validation", bad.text
    assert "truncation_direction" in bad.json()["error"]


def test_other_shapes_and_routes_pass_through(fleet: Fleet, gateway: str, user_key: str) -> None:
    auth = {"Authorization": f"Bearer {user_key}"}
    tei = httpx.post(f"{gateway}/rerank", json={"query": "q", "texts": ["a", "b"], "return_text": True},
                     headers=auth)
    assert tei.status_code == 200 and {item["text"] for item in tei.json()} == {"a", "b"}
    score = httpx.post(f"{gateway}/v1/score", json={"text_1": "q", "text_2": ["a", "b", "c"]}, headers=auth)
    assert score.status_code == 200 and len(score.json()["data"]) == 3
    models = httpx.get(f"{gateway}/v1/models", headers=auth)
    assert models.json()["data"][0]["id"] == "tiny-reranker"
    bad = httpx.post(f"{gateway}/v1/rerank", json={"query": "q", "documents": []}, headers=auth)
    assert bad.status_code == 422 and "documents" in bad.json()["error"]["message"]
    unknown = httpx.post(f"{gateway}/v1/rerank", json={"model": "nope", "query": "q", "documents": ["a"]},
                         headers=auth)
    # A replica accepts any `model` by default (--strict-model-names off) and names its own: passed on.
    assert unknown.status_code == 200 and unknown.json()["model"] == "tiny-reranker"
    too_many = httpx.post(f"{gateway}/v1/rerank", json={"query": "q", "documents": ["a"] * 1001}, headers=auth)
    assert too_many.status_code == 413


def test_killing_one_of_three_replicas_during_300_requests_fails_none(
        fleet: Fleet, gateway: str, user_key: str) -> None:
    async def run() -> list[int]:
        statuses: list[int] = []
        sem = asyncio.Semaphore(6)
        async with httpx.AsyncClient(timeout=60, headers={"Authorization": f"Bearer {user_key}"}) as client:
            async def one(i: int) -> None:
                async with sem:
                    if i == 60:
                        fleet.replicas[1].stop(signal.SIGKILL)
                    response = await client.post(f"{gateway}/v1/rerank",
                                                 json={"query": f"query {i}", "documents": DOCS[:4]})
                    statuses.append(response.status_code)
            await asyncio.gather(*(one(i) for i in range(300)))
        return statuses

    try:
        statuses = asyncio.run(run())
        assert len(statuses) == 300
        assert statuses.count(200) == 300, {s: statuses.count(s) for s in set(statuses)}
        snapshot = {u["url"]: u for u in httpx.get(f"{gateway}/admin/upstreams", headers=admin_headers()).json()}
        dead = snapshot[fleet.urls[1]]
        assert not dead["healthy"] or dead["breaker"] != "closed"
        # Requests caught on the dying replica were retried elsewhere (as connection errors or dropped
        # connections, depending on timing); none reached the client as an error.
        metrics = httpx.get(f"{gateway}/metrics").text
        success = r'rerankd_gateway_upstream_requests_total\{outcome="success",upstream="[^"]+"\} [1-9]'
        assert re.search(success, metrics)
    finally:
        fleet.restart(1)


def test_a_failing_replica_is_ejected_and_readmitted_after_it_recovers(fleet: Fleet, tmp_path: Path) -> None:
    with FlakyProxy(fleet.urls[0]) as flaky:
        proc = spawn_gateway(tmp_path, [flaky.url, fleet.urls[2]], "--database-url",
                             f"sqlite:///{tmp_path / 'gw.db'}", "--admin-key", ADMIN, "--health-interval", "0.2")
        try:
            gw = proc.wait_ready().url
            key = httpx.post(f"{gw}/admin/keys", json={"name": "k"}, headers=admin_headers()).json()["key"]

            def state() -> str:
                rows = httpx.get(f"{gw}/admin/upstreams", headers=admin_headers()).json()
                return next(r["breaker"] for r in rows if r["url"] == flaky.url)

            flaky.failing = True
            statuses = [rerank(gw, key, query=f"q{i}", documents=["a", "b"]).status_code for i in range(30)]
            assert statuses == [200] * 30  # failures were retried on the healthy replica
            assert state() == "open"
            hits_while_open = flaky.hits
            for i in range(10):
                assert rerank(gw, key, query=f"open {i}", documents=["a"]).status_code == 200
            assert flaky.hits - hits_while_open <= 6  # ejected: only health checks (and no traffic) reach it

            flaky.failing = False
            deadline = time.monotonic() + 30
            while state() != "closed":
                assert time.monotonic() < deadline, "breaker never closed after recovery"
                rerank(gw, key, query="probe", documents=["a"])
                time.sleep(0.3)
            metrics = httpx.get(f"{gw}/metrics").text
            assert f'rerankd_gateway_breaker_transitions_total{{to="open",upstream="{flaky.url}"}}' in metrics
            assert f'rerankd_gateway_breaker_transitions_total{{to="closed",upstream="{flaky.url}"}}' in metrics
        finally:
            proc.stop()


def test_every_replica_down_is_a_503_with_retry_after(tmp_path: Path) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    proc = spawn_gateway(tmp_path, [dead], "--database-url", f"sqlite:///{tmp_path / 'gw.db'}",
                         "--admin-key", ADMIN)
    try:
        proc.wait_ready(path="/health")
        assert httpx.get(f"{proc.url}/ready").status_code == 503
        response = rerank(proc.url, ADMIN, query="q", documents=["a"])
        assert response.status_code == 503
        assert int(response.headers["retry-after"]) >= 1
        assert "no replica" in response.json()["error"]["message"]
    finally:
        proc.stop()
