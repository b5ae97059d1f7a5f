"""Admission before work on a real gateway: who asks first, then the body's size, before pydantic sees it.

A real gateway (``running_gateway``) in front of a scripted replica (a real HTTP server on 127.0.0.1
that records what reaches it and answers what the test sets). The finding this guards: 200k empty
``{}`` documents (0.6 MB) used to cost the gateway 4.4 s of pydantic on the event loop (every client
stalled) to answer an uncounted, unrecorded 422.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from rerankd.gateway.settings import GatewaySettings
from support import free_port, running_gateway, serving_in_thread, wait_until

pytestmark = pytest.mark.timeout(120)

ADMIN = "gateway-admission-admin"
TENANT = "x-rerankd-tenant"
EMPTY_DOCUMENTS = b'{"query": "q", "documents": [' + b",".join([b"{}"] * 200_000) + b"]}"


class RecordingReplica:
    """A replica that answers every scoring request with ``status`` (a valid rerank 200 by default) and keeps
    the headers of each request it got."""

    def __init__(self) -> None:
        self.status = 200
        self.seen: list[dict[str, str]] = []

        async def rerank(request: Request) -> Response:
            self.seen.append(dict(request.headers))
            if self.status != 200:
                return JSONResponse({"error": {"message": "too large", "type": "payload_too_large"}},
                                    status_code=self.status)
            documents = json.loads(await request.body())["documents"]
            body = {"id": "x", "model": "scripted", "usage": {"prompt_tokens": 3, "total_tokens": 3},
                    "results": [{"index": i, "relevance_score": 1.0 / (i + 1)} for i in range(len(documents))]}
            return JSONResponse(body)

        async def ready(_: Request) -> JSONResponse:
            return JSONResponse({"status": "ready"})

        self.app = Starlette(routes=[Route("/v1/rerank", rerank, methods=["POST"]), Route("/ready", ready)])

    @contextmanager
    def serving(self) -> Iterator[str]:
        with serving_in_thread(self.app, free_port(), what="recording replica") as url:
            yield url


@contextmanager
def gateway_with_key(upstreams: list[str], database: Path, **settings: Any) -> Iterator[tuple[str, dict[str, Any]]]:
    """A gateway that sees every replica ready, and a key with 100 requests/min (its record, with ``key``)."""
    config = GatewaySettings(upstreams=upstreams, database_url=f"sqlite:///{database}", admin_key=ADMIN,
                             **settings)
    with running_gateway(config) as gateway:
        admin = {"Authorization": f"Bearer {ADMIN}"}
        wait_until(lambda: all(u["healthy"] for u in httpx.get(f"{gateway}/admin/upstreams", headers=admin).json()),
                   20, "every replica healthy")
        created = httpx.post(f"{gateway}/admin/keys", json={"name": "tenant-a", "rpm": 100},
                             headers=admin)
        assert created.status_code == 201, created.text
        yield gateway, created.json()


def usage_rows(database: Path) -> list[tuple[str, str, int, int]]:
    with sqlite3.connect(database) as db:
        return db.execute("SELECT key_id, route, status, tokens FROM usage_records ORDER BY created_at").fetchall()


class HealthPoller:
    """Calls ``/health`` in a loop on its own thread, keeping the slowest answer, until stopped."""

    def __init__(self, gateway: str) -> None:
        self._gateway = gateway
        self._stop = threading.Event()
        self.calls = 0
        self.slowest = 0.0
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.Client() as client:
            while not self._stop.is_set():
                started = time.monotonic()
                assert client.get(f"{self._gateway}/health").status_code == 200
                self.slowest = max(self.slowest, time.monotonic() - started)
                self.calls += 1

    def __enter__(self) -> HealthPoller:
        self._thread.start()
        wait_until(lambda: self.calls > 0, 10, "a first /health answer")
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)


def test_empty_documents_are_refused_fast_counted_against_rpm_and_recorded(tmp_path: Path) -> None:
    replica, database = RecordingReplica(), tmp_path / "gw.db"
    with replica.serving() as upstream, gateway_with_key([upstream], database) as (gateway, key):
        auth = {"Authorization": f"Bearer {key['key']}"}
        first = httpx.post(f"{gateway}/v1/rerank", json={"query": "q", "documents": ["a"]}, headers=auth)
        assert first.status_code == 200, first.text
        assert first.headers["x-ratelimit-remaining"] == "99"
        with HealthPoller(gateway) as health:
            started = time.monotonic()
            refused = httpx.post(f"{gateway}/v1/rerank", content=EMPTY_DOCUMENTS, timeout=30,
                                 headers={**auth, "content-type": "application/json"})
            took = time.monotonic() - started
        assert health.slowest < 0.5, f"/health stalled {health.slowest:.2f} s while the body was admitted"
        assert took < 1.0, f"the answer took {took:.2f} s"
        assert refused.status_code == 413, refused.text[:300]
        error = refused.json()["error"]
        assert error["field"] == "documents" and "--max-documents" in error["message"], error
        # Pydantic's 422 (admitted, then invalid) is charged the same way.
        invalid = httpx.post(f"{gateway}/v1/rerank", json={"query": "q", "documents": [{}]}, headers=auth)
        assert invalid.status_code == 422, invalid.text
        after = httpx.post(f"{gateway}/v1/rerank", json={"query": "q", "documents": ["a"]}, headers=auth)
        assert after.headers["x-ratelimit-remaining"] == "96"  # the 413 and the 422 each spent one
        assert len(replica.seen) == 2  # neither refusal reached a replica
    # The gateway has stopped and flushed its ledger: a row per request, the refusals at 0 tokens.
    assert usage_rows(database) == [(key["id"], "/v1/rerank", 200, 3), (key["id"], "/v1/rerank", 413, 0),
                                    (key["id"], "/v1/rerank", 422, 0), (key["id"], "/v1/rerank", 200, 3)]


def test_a_stranger_gets_401_for_the_same_body_not_413(tmp_path: Path) -> None:
    replica = RecordingReplica()
    with replica.serving() as upstream, gateway_with_key([upstream], tmp_path / "gw.db") as (gateway, _):
        for headers in ({}, {"Authorization": "Bearer rk_not-a-key"}):
            answer = httpx.post(f"{gateway}/v1/rerank", content=EMPTY_DOCUMENTS, timeout=30,
                                headers={**headers, "content-type": "application/json"})
            assert answer.status_code == 401, (headers, answer.text[:300])
            assert "max-documents" not in answer.text


def test_the_tenant_header_is_the_key_id_and_a_client_sent_one_is_replaced(tmp_path: Path) -> None:
    replicas = [RecordingReplica(), RecordingReplica()]
    with ExitStack() as stack:
        upstreams = [stack.enter_context(r.serving()) for r in replicas]
        gateway, key = stack.enter_context(gateway_with_key(upstreams, tmp_path / "gw.db", split_threshold=2))
        auth = {"Authorization": f"Bearer {key['key']}"}
        plain = httpx.post(f"{gateway}/v1/rerank", json={"query": "q", "documents": ["a"]}, headers=auth)
        assert plain.status_code == 200, plain.text
        forged = httpx.post(f"{gateway}/v1/rerank", json={"query": "q", "documents": ["a"]},
                            headers={**auth, "X-Rerankd-Tenant": "someone-else"})
        assert forged.status_code == 200, forged.text
        split = httpx.post(f"{gateway}/v1/rerank", json={"query": "q", "documents": ["a", "b", "c", "d"]},
                           headers=auth)
        assert split.status_code == 200, split.text
    seen = [headers for replica in replicas for headers in replica.seen]
    assert len(seen) == 4  # one each, then the split's two parts
    assert [headers.get(TENANT) for headers in seen] == [key["id"]] * 4


def test_a_replica_413_is_final_and_attempted_once(tmp_path: Path) -> None:
    replicas = [RecordingReplica(), RecordingReplica()]
    for replica in replicas:
        replica.status = 413
    with ExitStack() as stack:
        upstreams = [stack.enter_context(r.serving()) for r in replicas]
        gateway, key = stack.enter_context(gateway_with_key(upstreams, tmp_path / "gw.db"))
        answer = httpx.post(f"{gateway}/v1/rerank", json={"query": "q", "documents": ["a"]},
                            headers={"Authorization": f"Bearer {key['key']}"})
        assert answer.status_code == 413, answer.text
    assert sum(len(replica.seen) for replica in replicas) == 1


def test_a_tei_body_gets_teis_error_shape_through_the_gateway_and_a_rerank_body_rerankds(tmp_path: Path) -> None:
    """TEI clients read ``{"error", "error_type"}``; Jina/Cohere-style ones ``error.message`` or ``detail``. The
    gateway answers each body's errors in its own dialect, as a server does: pydantic's 422 and admission's
    refusals alike."""
    replica = RecordingReplica()
    with replica.serving() as upstream, gateway_with_key([upstream], tmp_path / "gw.db") as (gateway, key):
        auth = {"Authorization": f"Bearer {key['key']}"}
        bad_field = httpx.post(f"{gateway}/rerank", json={"query": "q", "texts": ["a"], "truncation_direction": "Up"},
                               headers=auth)
        assert bad_field.status_code == 422, bad_field.text
        tei = bad_field.json()
        assert tei["error_type"] == "Validation" and "truncation_direction" in tei["error"], tei
        assert "documents" not in tei["error"]
        too_many = httpx.post(f"{gateway}/rerank", json={"query": "q", "texts": [""] * 200_000}, headers=auth,
                              timeout=30)
        assert isinstance(too_many.json()["error"], str) and "error_type" in too_many.json(), too_many.text[:300]
        rerank = httpx.post(f"{gateway}/rerank", json={"query": "q", "documents": ["a"], "top_n": 0}, headers=auth)
        assert rerank.status_code == 422
        body = rerank.json()
        assert body["error"]["field"] == "top_n" and body["detail"] == body["error"]["message"], body
        assert len(replica.seen) == 0  # every refusal was the gateway's own
