"""The client compatibility suite: real client libraries, pinned, against a real ``rerankd up``.

These libraries pin clashing versions of their own dependencies (langchain-cohere wants cohere < 6, Cohere's own
SDK is at 7), so they live in their own environment, ``.venv-clients``, built by ``tests/clients/run`` from
``tests/clients/requirements.txt`` (cached per hash of the pins; rerankd runs from the checkout's ``src/``).
The main suite (``python -m pytest``) does not collect this directory where the libraries are missing; CI runs
it separately through that script.

One stack for the whole run: ``rerankd up`` on the tiny random-weight reranker with the tiny embedder beside it
(``--embedding-model``: a gateway, one replica of each, the web UI), exactly as a user starts it. Every test then
changes only a client's base URL and key: the one key reaches both models.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from clients.common import Stack
from rerankd.deployment.up import read_banner
from support import free_port

# Not collected where the client libraries are not installed (the main environment): under CI=true a skip
# fails, and CI runs this directory in .venv-clients (tests/clients/run).
_LIBRARIES = ("cohere", "langchain_cohere", "langchain_community", "langchain_openai", "llama_index",
              "haystack_integrations", "openai", "gradio_client")
collect_ignore_glob = [] if all(importlib.util.find_spec(m) for m in _LIBRARIES) else ["test_*.py"]

# Haystack sends anonymous usage events to its telemetry host on first use; tests reach nothing outside.
os.environ.setdefault("HAYSTACK_TELEMETRY_ENABLED", "False")


@pytest.fixture(scope="session")
def stack(tiny_model_dir: Path, embed_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """``rerankd up`` with its defaults (one replica, gateway, web UI) on the tiny reranker, with the tiny embedder
    (``--embedding-model``, one replica), on free ports.

    ``RERANKD_CLIENTS_STACK`` (a Stack as JSON) reuses a stack already running instead: test_cohere7.py runs
    test_cohere_sdk.py again under Cohere's 7.x SDK against this run's stack.
    """
    reused = os.environ.get("RERANKD_CLIENTS_STACK")
    if reused:
        fields = json.loads(reused)
        yield Stack(**{**fields, "data_dir": Path(fields["data_dir"])})
        return
    data_dir = tmp_path_factory.mktemp("up") / "data"
    gateway_port, ui_port, base = free_port(), free_port(), free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for secret in ("RERANKD_API_KEY", "RERANKD_ADMIN_KEY"):
        env.pop(secret, None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "rerankd.cli", "up", "--model", str(tiny_model_dir), "--data-dir", str(data_dir),
         "--embedding-model", str(embed_model_dir),
         "--gateway-port", str(gateway_port), "--ui-port", str(ui_port), "--server-base-port", str(base),
         # The fused forward's kernels are built with g++ on first use in each environment (minutes on two busy
         # cores): they change speed, not one byte of the API these clients talk to.
         "--compile", "off"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    try:
        # Two replicas (reranker and embedder) load before the banner: minutes on two cores busy with other work.
        printed = read_banner(proc, timeout=420)
        gateway = printed["gateway"]
        models = httpx.get(f"{gateway}/v1/models", headers={"Authorization": f"Bearer {printed['API key']}"},
                           timeout=30)
        assert models.status_code == 200, models.text
        embed_model = embed_model_dir.name  # as `rerankd up` names the embedding pool
        served = [m["id"] for m in models.json()["data"]]
        assert embed_model in served, served
        yield Stack(gateway=gateway, ui=printed["web UI"], api_key=printed["API key"],
                    admin_key=(data_dir / "admin-key").read_text(encoding="utf-8").strip(), data_dir=data_dir,
                    model=next(m for m in served if m != embed_model), embed_model=embed_model)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


@pytest.fixture
def limited_key(stack: Stack) -> str:
    """A key whose one request per minute is already spent: its next request is the gateway's 429."""
    key = stack.key(rpm=1)
    spent = httpx.post(f"{stack.gateway}/v1/rerank", json={"query": "q", "documents": ["a"]},
                       headers={"Authorization": f"Bearer {key}"}, timeout=30)
    assert spent.status_code == 200, spent.text
    refused = httpx.post(f"{stack.gateway}/v1/rerank", json={"query": "q", "documents": ["a"]},
                         headers={"Authorization": f"Bearer {key}"}, timeout=30)
    assert refused.status_code == 429, refused.text  # what every client below must then show
    return key

