"""A request whose client went away is not computed."""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path

import httpx

from conftest import running_server
from rerankd.config import ServerSettings


def _pairs_total(url: str) -> float:
    for line in httpx.get(f"{url}/metrics").text.splitlines():
        if line.startswith("rerankd_pairs_total "):
            return float(line.split()[-1])
    return 0.0


def test_disconnected_client_work_is_dropped(tiny_model_dir: Path) -> None:
    # A tiny token budget makes a 50-document request take many forward passes.
    settings = ServerSettings(model=str(tiny_model_dir), device="cpu", dtype="float32", max_batch_tokens=64,
                              max_documents=1000)
    docs = [f"document number {i} " * 40 for i in range(400)]

    async def abandon(url: str) -> None:
        """Send the request, wait until the model is on it, then hang up (cancel the client's call)."""
        async with httpx.AsyncClient(timeout=120) as client:
            call = asyncio.ensure_future(client.post(f"{url}/v1/rerank", json={"query": "q", "documents": docs}))
            deadline = time.monotonic() + 60
            while await asyncio.to_thread(_pairs_total, url) == 0:
                assert time.monotonic() < deadline and not call.done(), "scoring never started"
                await asyncio.sleep(0.05)
            call.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await call

    with running_server(settings) as url:
        asyncio.run(abandon(url))
        asyncio.run(asyncio.sleep(2.0))
        first = _pairs_total(url)
        asyncio.run(asyncio.sleep(1.0))
        assert _pairs_total(url) == first  # nothing more is being computed
        assert first < len(docs)
        metrics = httpx.get(f"{url}/metrics").text
        assert "rerankd_cancelled_requests_total 1.0" in metrics
