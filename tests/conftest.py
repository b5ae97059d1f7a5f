"""Shared fixtures: a tiny random-weight Qwen3-Reranker built offline, and real servers on 127.0.0.1."""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from rerankd.config import ServerSettings
from rerankd.devtools.random_model import build_random_model


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model directory with the real Qwen3 tokenizer and tiny random weights (built once per run)."""
    cached = os.environ.get("RERANKD_TEST_MODEL_DIR")
    if cached and (Path(cached) / "config.json").exists():
        return Path(cached)
    return build_random_model(tmp_path_factory.mktemp("models") / "tiny-qwen3-reranker", "tiny", seed=0)


@contextmanager
def running_server(settings: ServerSettings, timeout: float = 120.0) -> Iterator[str]:
    """Run ``create_server_app(settings)`` under uvicorn in a thread; yield its base URL once ready."""
    import uvicorn

    from rerankd.server.app import create_server_app

    port = free_port()
    settings = settings.model_copy(update={"port": port, "host": "127.0.0.1"})
    app = create_server_app(settings)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                           lifespan="on", timeout_graceful_shutdown=5))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    headers = {"Authorization": f"Bearer {settings.api_key}"} if settings.api_key else {}
    while True:
        try:
            if httpx.get(f"{base}/ready", headers=headers, timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline or not thread.is_alive():
            server.should_exit = True
            raise RuntimeError("server did not become ready")
        time.sleep(0.1)
    try:
        yield base
    finally:
        server.should_exit = True
        thread.join(timeout=30)


@pytest.fixture(scope="session")
def server_url(tiny_model_dir: Path) -> Iterator[str]:
    """A float32 server with a short model length so truncation is easy to exercise."""
    settings = ServerSettings(model=str(tiny_model_dir), served_model_name="tiny-reranker", device="cpu",
                              dtype="float32", max_model_len=256, max_documents=50,
                              max_body_bytes=256 * 1024)
    with running_server(settings) as url:
        yield url
