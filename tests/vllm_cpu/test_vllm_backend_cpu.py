"""The vllm backend run for real on vLLM's CPU build: same scores as the torch backend, prefix caching on
and effective, ``rerankd serve --backend vllm`` over HTTP, and clear errors for a device the build lacks.

Each ``vllm.LLM`` takes ~35 s to start on two cores, so one engine serves the in-process tests.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from rerankd.engine.backends.base import TokenGroup
from rerankd.engine.backends.torch_backend import TorchBackend
from rerankd.engine.backends.vllm_backend import CPU_BLOCK_SIZE, VllmBackend, vllm_platform_device
from rerankd.engine.model_source import load_tokenizer
from rerankd.engine.prompt import PromptBuilder
from support import Proc, free_port, process_env

# vLLM engines start slowly on two cores that CI shares with the main suite (.ci/run): up to 600 s each.
pytestmark = pytest.mark.timeout(900)

BLOCK = CPU_BLOCK_SIZE  # the backend's KV block size on CPU: prefix caching shares whole blocks only
QUERY = "how do vector databases index embeddings"
DOCS = [
    "HNSW builds a layered proximity graph over the vectors and searches it greedily from the top layer.",
    "Product quantisation splits each vector into sub-vectors and stores a codebook index for each.",
    "The recipe calls for two eggs, a cup of flour and a pinch of salt.",
    "IVF partitions the space with k-means and scans only the lists nearest to the query.",
    "Tides are caused by the gravitational pull of the moon and the sun.",
]


@pytest.fixture(scope="module")
def tokenizer(small_model_dir: Path) -> Any:
    return load_tokenizer(small_model_dir)


@pytest.fixture(scope="module")
def vllm_backend(small_model_dir: Path, tokenizer: Any) -> Iterator[VllmBackend]:
    backend = VllmBackend(small_model_dir, yes_token_id=tokenizer.convert_tokens_to_ids("yes"),
                          no_token_id=tokenizer.convert_tokens_to_ids("no"), max_model_len=2048, device="cpu",
                          dtype="float32", gpu_memory_utilization=0.2)
    yield backend
    backend.close()


def _groups(tokenizer: Any, *requests: tuple[str, list[str], str | None]) -> list[TokenGroup]:
    builder = PromptBuilder(tokenizer, 2048)
    return [TokenGroup(shared=list(g.shared), tails=[list(t) for t in g.tails])
            for g in (builder.build(q, d, instruction) for q, d, instruction in requests)]


def test_vllm_backend_scores_like_the_torch_backend(vllm_backend: VllmBackend, small_model_dir: Path,
                                                    tokenizer: Any) -> None:
    """Same prompts, fp32 on both: vLLM's sequence-classifier conversion of the yes/no rows, rerankd's token
    ids and the probability → logit inversion together give the torch backend's raw scores."""
    groups = _groups(tokenizer, (QUERY, DOCS, None),
                     ("what causes tides", DOCS[::-1], "Given a question, retrieve passages that answer it"))
    torch_backend = TorchBackend(small_model_dir, yes_token_id=vllm_backend.yes_token_id,
                                 no_token_id=vllm_backend.no_token_id, max_model_len=2048, device="cpu",
                                 dtype="float32")
    try:
        expected = torch_backend.score(groups)
    finally:
        torch_backend.close()
    got = vllm_backend.score(groups)
    assert [len(g) for g in got] == [len(DOCS), len(DOCS)]
    assert max(abs(a - b) for ge, gg in zip(expected, got, strict=True) for a, b in zip(ge, gg, strict=True)) < 1e-4
    spread = max(expected[0]) - min(expected[0])
    assert spread > 0.5, f"scores too close together to test anything: {expected[0]}"
    assert vllm_backend.info.name == "vllm" and vllm_backend.info.device == "cpu"
    assert vllm_backend.score([]) == [] and vllm_backend.score([TokenGroup(shared=[1, 2], tails=[])]) == [[]]


def test_prefix_caching_is_on_and_shares_the_prefix_within_one_call(vllm_backend: VllmBackend,
                                                                    tokenizer: Any) -> None:
    """One call of N documents: every prompt after the first finds the shared prefix's whole blocks in vLLM's
    cache (vLLM shares blocks between prompts scheduled in the same step); a prefix shorter than one block
    shares nothing — why the block size matters for a reranker's ~71-token default prefix."""
    vllm_backend._llm.reset_prefix_cache()
    long_instruction = "Given a technical question about search infrastructure, " * 6
    (group,) = _groups(tokenizer, (QUERY, DOCS, long_instruction))
    assert vllm_backend.block_size == BLOCK, "the backend asks vLLM's CPU build for CPU_BLOCK_SIZE, not 128"
    assert len(group.shared) >= 3 * BLOCK
    before = vllm_backend.prefix_cache_counts()
    assert before is not None, "vLLM reported no prefix-cache counters: is prefix caching off?"
    vllm_backend.score([group])
    queried, found = (a - b for a, b in zip(vllm_backend.prefix_cache_counts(), before, strict=True))
    assert queried == group.tokens
    shared_blocks = len(group.shared) // BLOCK * BLOCK
    assert found >= (len(DOCS) - 1) * shared_blocks, (queried, found, len(group.shared))

    vllm_backend._llm.reset_prefix_cache()
    # Half a block of prefix: a block holding it also holds a document's first tokens, which differ.
    short = TokenGroup(shared=group.shared[: BLOCK // 2], tails=group.tails)
    before = vllm_backend.prefix_cache_counts()
    vllm_backend.score([short])
    queried, found = (a - b for a, b in zip(vllm_backend.prefix_cache_counts(), before, strict=True))
    assert queried == short.tokens and found == 0


def test_rerankd_serve_with_the_vllm_backend_answers_over_http(small_model_dir: Path, tokenizer: Any,
                                                               vllm_backend: VllmBackend, tmp_path: Path) -> None:
    """The whole server path — settings, engine loading, batcher, HTTP shapes — with vLLM underneath."""
    port = free_port()
    args = ["serve", "--model", str(small_model_dir), "--backend", "vllm", "--device", "cpu", "--dtype", "float32",
            "--max-model-len", "2048", "--gpu-memory-utilization", "0.2"]
    server = Proc(args, port, tmp_path / "serve.log", process_env()).start()
    engine_processes: list[psutil.Process] = []
    try:
        server.wait_ready(timeout=600)
        assert server.popen is not None
        engine_processes = psutil.Process(server.popen.pid).children(recursive=True)
        assert engine_processes, "vLLM runs its engine in child processes"
        info = httpx.get(server.url + "/info").json()
        assert (info["backend"], info["device"], info["dtype"]) == ("vllm", "cpu", "float32")
        reply = httpx.post(server.url + "/v1/rerank", json={"query": QUERY, "documents": DOCS, "raw_scores": True},
                           timeout=60)
        assert reply.status_code == 200, reply.text
        results = reply.json()["results"]
        (expected,) = vllm_backend.score(_groups(tokenizer, (QUERY, DOCS, None)))
        assert [r["index"] for r in results] == sorted(range(len(DOCS)), key=lambda i: -expected[i])
        for r in results:
            assert abs(r["relevance_score"] - expected[r["index"]]) < 1e-4
        bad = httpx.post(server.url + "/v1/rerank", json={"query": QUERY, "documents": []}, timeout=10)
        assert 400 <= bad.status_code < 500
    finally:
        # uvicorn re-raises the SIGTERM it handled once shutdown is complete: 0 or -15 both mean a clean stop.
        assert server.stop() in (0, -15), server.log_tail()
    assert "Application shutdown complete" in server.log_tail(20000)
    _, alive = psutil.wait_procs(engine_processes, timeout=30)
    assert not alive, f"vLLM engine processes left running after the server stopped: {alive}"


def test_a_device_the_installed_vllm_build_lacks_is_a_clear_error(small_model_dir: Path) -> None:
    assert vllm_platform_device() == "cpu"
    with pytest.raises(ValueError, match=r"--device cuda .* needs a CUDA build \(pip install vllm\).*runs on cpu"):
        VllmBackend(small_model_dir, yes_token_id=9693, no_token_id=2152, max_model_len=256, device="cuda")
