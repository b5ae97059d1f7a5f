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

from rerankd.gateway.settings import GatewaySettings
from rerankd.server.settings import ServerSettings
from support import Arrivals, metric_value, running_gateway, running_server, serving_in_thread, wait_until


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

    def probe(url: str) -> float:
        """One single-document request; its answer means every batch queued before it has been run."""
        assert httpx.post(f"{url}/v1/rerank", json={"query": "probe", "documents": ["probe"]},
                          timeout=60).status_code == 200
        return metric_value(url, "rerankd_pairs_total")

    with running_server(settings) as url:
        asyncio.run(abandon(url))
        wait_until(lambda: metric_value(url, "rerankd_cancelled_requests_total") == 1, 30,
                   "the server to cancel the abandoned request")
        # Batches are taken first in, first out: had the abandoned request's remaining pairs stayed queued,
        # the probe would have waited behind all of them. Its answer counts at most the one batch that was
        # running when the client left, and a second probe adds only its own pair.
        first = probe(url)
        assert first - 1 < len(docs)  # the probe's own pair aside, the abandoned request was not finished
        assert probe(url) == first + 1  # nothing more is being computed
        # Counted as nginx's 499, and not reported as a crash: no error-level "Exception in ASGI application".
        counted = 'rerankd_requests_total{route="/v1/rerank",status="499",task="rerank"} 1.0'
        wait_until(lambda: counted in httpx.get(f"{url}/metrics").text, 10, "the hang-up counted as 499")
        assert "rerankd_cancelled_requests_total 1.0" in httpx.get(f"{url}/metrics").text
        errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
        assert errors == []


def _slow_upstream(arrived: Arrivals, dropped: Arrivals, answered: list[str]) -> object:
    """A real HTTP replica that answers a rerank only after 60 s, and reports when a call arrives and when its
    caller hangs up on it, so a test can watch the gateway wait on it and then drop it."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    async def until_disconnected(request: Request) -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    async def rerank(request: Request) -> JSONResponse:
        await request.body()
        arrived.arrive()
        try:
            await asyncio.wait_for(until_disconnected(request), timeout=60)
            dropped.arrive()  # the gateway closed the call: nobody waits for this answer any more
        except asyncio.TimeoutError:
            answered.append(request.headers.get("x-request-id", ""))
        return JSONResponse({"id": "x", "results": [{"index": 0, "relevance_score": 0.5}],
                             "usage": {"prompt_tokens": 10, "total_tokens": 10}})

    async def ready(_: Request) -> JSONResponse:
        return JSONResponse({"status": "ready"})

    return Starlette(routes=[Route("/v1/rerank", rerank, methods=["POST"]), Route("/ready", ready)])


def test_gateway_counts_a_hang_up_as_499_not_an_error(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    arrived, dropped, answered = Arrivals(), Arrivals(), []
    with serving_in_thread(_slow_upstream(arrived, dropped, answered), what="slow upstream") as upstream:
        settings = GatewaySettings(upstreams=[upstream], database_url=f"sqlite:///{tmp_path / 'gw.db'}",
                                   admin_key="admin-secret-for-disconnect-test")
        with running_gateway(settings) as gateway:
            admin = {"Authorization": "Bearer admin-secret-for-disconnect-test"}
            key = httpx.post(f"{gateway}/admin/keys", json={"name": "leaver"}, headers=admin).json()["key"]

            async def hang_up() -> None:
                async with httpx.AsyncClient(timeout=30) as client:
                    call = asyncio.ensure_future(client.post(
                        f"{gateway}/v1/rerank", json={"query": "q", "documents": ["a"]},
                        headers={"Authorization": f"Bearer {key}"}))
                    # The gateway is waiting on the upstream once the call has reached it.
                    assert await asyncio.to_thread(arrived.wait_for, 1, 20), "the call never reached the upstream"
                    assert not call.done()
                    call.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await call

            asyncio.run(hang_up())
            # The gateway must drop the upstream call, not wait the upstream's 60 s for an answer nobody wants.
            assert dropped.wait_for(1, timeout=10), "the gateway kept waiting on the upstream after the hang-up"
            metric = 'rerankd_gateway_requests_total{route="/v1/rerank",status="499",task="rerank"} 1.0'
            wait_until(lambda: metric in httpx.get(f"{gateway}/metrics").text, 10, "the hang-up counted as 499")
    assert answered == [] and arrived.count == 1
    with sqlite3.connect(tmp_path / "gw.db") as db:  # the gateway has stopped: its ledger is flushed
        assert db.execute("SELECT status, route FROM usage_records").fetchall() == [(499, "/v1/rerank")]
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == []
