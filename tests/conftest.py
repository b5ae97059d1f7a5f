"""Shared fixtures: a tiny random-weight Qwen3-Reranker built offline, and real servers on 127.0.0.1.

The helpers they are built from (free ports, servers in threads, ``rerankd`` processes) live in
``tests/support.py``; tests import those from there, never from this file."""

from __future__ import annotations

import importlib.util
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from rerankd.devtools.random_model import build_random_model
from rerankd.server.settings import ServerSettings
from support import Fleet, running_server, spawn_replica

# tests/vllm_cpu needs vLLM (its CPU build, in its own environment: tests/vllm_cpu/run). Where vLLM is
# not installed the directory is not collected at all, rather than skipped: under CI=true a skip fails, and CI
# runs it separately.
collect_ignore = [] if importlib.util.find_spec("vllm") is not None else ["vllm_cpu"]


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """Under ``CI=true`` a skipped test fails: CI installs every tool and checks PostgreSQL and Redis answer,
    so a skip there ("PostgreSQL unreachable", "redis-server is not installed") means a test silently did
    not run, not that it does not apply."""
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if os.environ.get("CI") == "true" and report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[-1] if isinstance(report.longrepr, tuple) else report.longrepr
        report.outcome = "failed"
        report.longrepr = f"skipped under CI=true, where every service and tool must be present: {reason}"


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model directory with the real Qwen3 tokenizer and tiny random weights (built once per run)."""
    cached = os.environ.get("RERANKD_TEST_MODEL_DIR")
    if cached and (Path(cached) / "config.json").exists():
        return Path(cached)
    return build_random_model(tmp_path_factory.mktemp("models") / "tiny-qwen3-reranker", "tiny", seed=0)


@pytest.fixture(scope="session")
def server_url(tiny_model_dir: Path) -> Iterator[str]:
    """A float32 server with a short model length so truncation is easy to exercise."""
    settings = ServerSettings(model=str(tiny_model_dir), served_model_name="tiny-reranker", device="cpu",
                              dtype="float32", max_model_len=256, max_documents=50,
                              max_body_bytes=256 * 1024)
    with running_server(settings) as url:
        yield url


@pytest.fixture(scope="session")
def embed_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Qwen3-Embedding-shaped directory: the real tokenizer (with the released embedder's end-of-text
    post-processor), tiny random weights, the sentence-transformers files (built once per run)."""
    cached = os.environ.get("RERANKD_TEST_EMBED_MODEL_DIR")
    if cached and (Path(cached) / "config.json").exists():
        return Path(cached)
    return build_random_model(tmp_path_factory.mktemp("models") / "tiny-qwen3-embedding", "embed-tiny", seed=0)


@pytest.fixture(scope="session")
def embed_server_url(embed_model_dir: Path) -> Iterator[str]:
    """A float32 embedding server with a short model length so truncation is easy to exercise. transformers'
    forward (--compile off): the fused forward gives the same final hidden states (tests/unit/test_fused_forward.py),
    and compiling its kernels takes minutes on a loaded 2-core machine."""
    settings = ServerSettings(model=str(embed_model_dir), served_model_name="tiny-embedder", device="cpu",
                              dtype="float32", max_model_len=128, max_documents=50,
                              max_body_bytes=256 * 1024, compile="off")
    with running_server(settings) as url:
        yield url


@pytest.fixture(scope="session")
def fleet(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    """Three real ``rerankd serve`` processes (started together; they load in parallel)."""
    log_dir = tmp_path_factory.mktemp("fleet-logs")
    replicas = [spawn_replica(tiny_model_dir, log_dir) for _ in range(3)]
    try:
        for replica in replicas:
            replica.wait_ready()
        yield Fleet(tiny_model_dir, log_dir, replicas)
    finally:
        for replica in replicas:
            replica.stop(signal.SIGKILL)
