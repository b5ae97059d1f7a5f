"""The vLLM backend: an in-process ``vllm.LLM`` on CUDA, for high-throughput serving.

vLLM loads the original Qwen3-Reranker as a sequence classifier (``hf_overrides``): its single
output row is ``w_yes - w_no``, the same row the torch backend uses, and ``classify`` returns
``sigmoid(logit_yes - logit_no)``. This backend feeds rerankd's own token ids (``TokensPrompt``), so
tokenization is identical to the other backends, and converts the probability back to the raw
score with the logit function. Automatic prefix caching lets the shared prefix of a group be
computed once.

vLLM is imported only when a ``VllmBackend`` is built, never at module import.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import math
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


def vllm_available() -> bool:
    """True when vLLM is installed and torch sees a CUDA device."""
    if importlib.util.find_spec("vllm") is None:
        return False
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


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


def _probability(output: Any) -> float:
    """The single classifier probability from a vLLM classify/encode output, whatever its shape."""
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
    """Scores token groups with an in-process vLLM engine (CUDA only)."""

    def __init__(
        self,
        model_path: str | Path,
        *,
        yes_token_id: int,
        no_token_id: int,
        max_model_len: int,
        device: str = "auto",
        dtype: str = "auto",
        gpu_memory_utilization: float = 0.9,
    ) -> None:
        try:
            import vllm
            from vllm.inputs import TokensPrompt
        except ImportError as exc:
            raise RuntimeError(_INSTALL_HINT) from exc
        if device not in ("auto", "cuda") and not device.startswith("cuda"):
            raise ValueError(f"the vllm backend runs on CUDA only, not --device {device}")

        # vLLM resolves "yes"/"no" to token ids itself; these are kept to report and cross-check.
        self.yes_token_id = yes_token_id
        self.no_token_id = no_token_id
        self._tokens_prompt = TokensPrompt
        kwargs: dict[str, Any] = {
            "model": str(model_path),
            "hf_overrides": dict(_QWEN3_RERANKER_OVERRIDES),
            "max_model_len": max_model_len,
            "dtype": dtype,
            "enable_prefix_caching": True,
            "gpu_memory_utilization": gpu_memory_utilization,
        }
        try:
            self._llm = vllm.LLM(runner="pooling", **kwargs)
        except TypeError as exc:
            if "runner" not in str(exc):
                raise
            # Older vLLM: no ``runner``; the pooling model is picked by ``task``.
            self._llm = vllm.LLM(task="score", **kwargs)
        resolved_dtype = dtype
        with contextlib.suppress(AttributeError):
            resolved_dtype = str(self._llm.llm_engine.model_config.dtype).removeprefix("torch.")
        self.info = BackendInfo(
            name="vllm", device="cuda", dtype=resolved_dtype, max_model_len=max_model_len
        )
        log.info("vllm backend ready: model=%s dtype=%s max_model_len=%d",
                 model_path, resolved_dtype, max_model_len)

    def _run(self, prompts: list[Any]) -> list[Any]:
        llm = self._llm
        if hasattr(llm, "classify"):
            return list(llm.classify(prompts, use_tqdm=False))
        return list(llm.encode(prompts, pooling_task="classify", use_tqdm=False))

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
        flat = [prob_to_logit(_probability(o)) for o in outputs]
        return split_by_group(flat, groups)

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
