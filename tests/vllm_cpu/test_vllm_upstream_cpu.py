"""A plain ``vllm serve`` (deploy/vllm/serve.sh, vLLM's CPU build) as the gateway's upstream, for real.

tests/unit/test_vllm_upstream.py renders the chat template the way vLLM does and parses a recorded vLLM
answer; here vLLM itself renders it and answers: its /v1/rerank must give rerankd's scores for the same
(query, documents), and the gateway in front of it must pass them through and bill the tokens.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from rerankd.engine.backends.torch_backend import TorchBackend
from rerankd.engine.model_source import load_tokenizer
from rerankd.engine.prompt import PromptBuilder
from support import Proc, free_port, spawn_gateway

# vLLM engines start slowly on two cores that CI shares with the main suite (.ci/run): up to 600 s each.
pytestmark = pytest.mark.timeout(900)

ROOT = Path(__file__).resolve().parents[2]
ADMIN = "admin-" + "v" * 32
QUERY = "what causes tides"
DOCS = [
    "Tides are caused by the gravitational pull of the moon and, to a lesser degree, the sun.",
    "The recipe calls for two eggs, a cup of flour and a pinch of salt.",
    "Ocean water bulges toward the moon, and the earth rotates beneath the bulge twice a day.",
    "HNSW builds a layered proximity graph over vectors.",
]


@pytest.fixture(scope="module")
def vllm_server(small_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """deploy/vllm/serve.sh exactly as documented, with the small model and CPU-sized memory."""
    port = free_port()
    log_path = tmp_path_factory.mktemp("vllm") / "vllm-serve.log"
    env = dict(os.environ, MODEL=str(small_model_dir), HOST="127.0.0.1", PORT=str(port),
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    with log_path.open("wb") as log:
        popen = subprocess.Popen(["bash", str(ROOT / "deploy/vllm/serve.sh"), "--dtype", "float32",
                                  "--max-model-len", "2048", "--gpu-memory-utilization", "0.2"],
                                 stdout=log, stderr=subprocess.STDOUT, env=env)
    server = Proc(args=[], port=port, log_path=log_path, env=env, popen=popen)  # for its wait and stop
    try:
        yield server.wait_ready(timeout=600, path="/health").url
    finally:
        server.stop(timeout=60)


@pytest.fixture(scope="module")
def rerankd_raw_scores(small_model_dir: Path) -> list[float]:
    """rerankd's own raw scores (logit_yes - logit_no) for QUERY × DOCS, default instruction, torch backend, fp32."""
    tokenizer = load_tokenizer(small_model_dir)
    group = PromptBuilder(tokenizer, 2048).build(QUERY, DOCS)
    backend = TorchBackend(small_model_dir, yes_token_id=tokenizer.convert_tokens_to_ids("yes"),
                           no_token_id=tokenizer.convert_tokens_to_ids("no"), max_model_len=2048, device="cpu",
                           dtype="float32")
    try:
        (raw,) = backend.score([group])
    finally:
        backend.close()
    assert max(raw) - min(raw) > 1.0, f"scores too close together to test anything: {raw}"
    return raw


def _assert_same_scores(results: list[dict], raw: list[float]) -> None:
    """vLLM answers probabilities (float32): compared as logits, which keeps small probabilities meaningful."""
    assert [r["index"] for r in results] == sorted(range(len(raw)), key=lambda i: -raw[i])
    for r in results:
        p = r["relevance_score"]
        assert abs(math.log(p) - math.log1p(-p) - raw[r["index"]]) < 1e-3, (r, raw)


def test_vllm_serve_with_the_template_scores_like_rerankd(vllm_server: str, small_model_dir: Path,
                                                          rerankd_raw_scores: list[float]) -> None:
    reply = httpx.post(vllm_server + "/v1/rerank", json={"model": str(small_model_dir), "query": QUERY,
                                                         "documents": DOCS}, timeout=60)
    assert reply.status_code == 200, reply.text
    body = reply.json()
    _assert_same_scores(body["results"], rerankd_raw_scores)
    assert body["usage"]["total_tokens"] > 0


def test_gateway_in_front_of_vllm_serve_passes_scores_through_and_bills_tokens(
        vllm_server: str, small_model_dir: Path, rerankd_raw_scores: list[float], tmp_path: Path) -> None:
    gateway = spawn_gateway(tmp_path, [vllm_server], "--database-url", f"sqlite:///{tmp_path / 'gw.db'}",
                            "--admin-key", ADMIN, "--upstream-ready-path", "/health")
    try:
        url = gateway.wait_ready(timeout=60).url
        admin = {"Authorization": f"Bearer {ADMIN}"}
        created = httpx.post(f"{url}/admin/keys", json={"name": "vllm-user"}, headers=admin)
        assert created.status_code == 201, created.text
        key = created.json()["key"]
        reply = httpx.post(f"{url}/v1/rerank", json={"model": str(small_model_dir), "query": QUERY, "documents": DOCS},
                           headers={"Authorization": f"Bearer {key}"}, timeout=60)
        assert reply.status_code == 200, reply.text
        _assert_same_scores(reply.json()["results"], rerankd_raw_scores)
        billed = reply.json()["usage"]["total_tokens"]
        assert billed > 0
        deadline = time.monotonic() + 15  # the ledger writes in the background, every 0.5 s
        while True:
            days = httpx.get(f"{url}/admin/usage", headers=admin).json()
            if sum(d["tokens"] for d in days) == billed or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert [(d["requests"], d["documents"], d["tokens"]) for d in days] == [(1, len(DOCS), billed)], days
    finally:
        gateway.stop()
