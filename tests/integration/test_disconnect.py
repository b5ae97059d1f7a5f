"""A request whose client went away is not computed (server) or forwarded on (gateway), and is no error."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import time
from pathlib import Path

import httpx
import pytest

from rerankd.config import ServerSettings
from rerankd.gateway.settings import GatewaySettings
from support import free_port, metric_value, running_gateway, running_server, serving_in_thread


def test_disconnected_client_work_is_dropped(tiny_model_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    # A tiny token budget makes a 50-document request take many forward passes.
    settings = ServerSettings(model=str(tiny_model_dir), device="cpu", dtype="float32", max_batch_tokens=64,
                              max_documents=1000)
    docs = [f"document number {i} " * 40 for i in range(400)]

    async def abandon(url: str) -> None:
        """Send the request, wait until the model is on it, then hang up (cancel the client's call)."""
        async with httpx.AsyncClient(timeout=120) as client:
            call = asyncio.ensure_future(client.post(f"{url}/v1/rerank", json={"query": "q", "documents": docs}))
            deadline = time.monotonic() + 60
            while await asyncio.to_thread(metric_value, url, "rerankd_pairs_total") == 0:
                assert time.monotonic() < deadline and not call.done(), "scoring never started"
                await asyncio.sleep(0.05)
            call.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await call

    with running_server(settings) as url:
        asyncio.run(abandon(url))
        asyncio.run(asyncio.sleep(2.0))
        first = metric_value(url, "rerankd_pairs_total")
        asyncio.run(asyncio.sleep(1.0))
        assert metric_value(url, "rerankd_pairs_total") == first  # nothing more is being computed
        assert first < len(docs)
        metrics = httpx.get(f"{url}/metrics").text
        assert "rerankd_cancelled_requests_total 1.0" in metrics
        # Counted as nginx's 499, and not reported as a crash: no error-level "Exception in ASGI application".
        assert 'rerankd_requests_total{route="/v1/rerank",status="499"} 1.0' in metrics
        errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
        assert errors == []


def _slow_upstream(answered: list[str]) -> object:
    """A real HTTP replica that takes 3 s per rerank, so a client can hang up while the gateway waits."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    async def rerank(request: Request) -> JSONResponse:
        await request.body()
        await asyncio.sleep(3)
        if not await request.is_disconnected():  # the gateway still wants this answer
            answered.append(request.headers.get("x-request-id", ""))
        return JSONResponse({"id": "x", "results": [{"index": 0, "relevance_score": 0.5}],
                             "usage": {"prompt_tokens": 10, "total_tokens": 10}})

    async def ready(_: Request) -> JSONResponse:
        return JSONResponse({"status": "ready"})

    return Starlette(routes=[Route("/v1/rerank", rerank, methods=["POST"]), Route("/ready", ready)])


def test_gateway_counts_a_hang_up_as_499_not_an_error(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    answered: list[str] = []
    port = free_port()
    with serving_in_thread(_slow_upstream(answered), port, what="slow upstream") as upstream:
        settings = GatewaySettings(upstreams=[upstream], database_url=f"sqlite:///{tmp_path / 'gw.db'}",
                                   admin_key="admin-secret-for-disconnect-test")
        with running_gateway(settings) as gateway:
            admin = {"Authorization": "Bearer admin-secret-for-disconnect-test"}
            key = httpx.post(f"{gateway}/admin/keys", json={"name": "leaver"}, headers=admin).json()["key"]

            async def hang_up() -> None:
                async with httpx.AsyncClient(timeout=10) as client:
                    call = asyncio.ensure_future(client.post(
                        f"{gateway}/v1/rerank", json={"query": "q", "documents": ["a"]},
                        headers={"Authorization": f"Bearer {key}"}))
                    await asyncio.sleep(0.8)  # the gateway is waiting on the upstream now
                    call.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await call

            asyncio.run(hang_up())
            deadline = time.monotonic() + 10
            metric = 'rerankd_gateway_requests_total{route="/v1/rerank",status="499"} 1.0'
            while metric not in httpx.get(f"{gateway}/metrics").text:
                assert time.monotonic() < deadline, "the hang-up was never counted as 499"
                time.sleep(0.1)
            time.sleep(3.5)  # past the upstream's 3 s: the cancelled call must not have been answered
    assert answered == []  # the gateway dropped the upstream call instead of waiting for it
    with sqlite3.connect(tmp_path / "gw.db") as db:  # the gateway has stopped: its ledger is flushed
        assert db.execute("SELECT status, route FROM usage_records").fetchall() == [(499, "/v1/rerank")]
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == []
