"""The scoring engine: prompt building → dynamic batcher → backend, for one loaded model.

Why one object: the HTTP layer needs a single awaitable — "score these documents for this query" —
and must not know about tokenizers, token budgets or devices.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rerankd.engine.backends.base import BackendInfo, ScoringBackend
from rerankd.engine.batcher import DynamicBatcher
from rerankd.engine.config import BACKEND_CHOICES, EngineConfig
from rerankd.engine.prompt import PromptBuilder, PromptGroup
from rerankd.engine.score_cache import ScoreCache, model_identity
from rerankd.errors import PayloadTooLargeError
from rerankd.observability.metrics import ServerMetrics
from rerankd.protocol import RerankTask

__all__ = ["EngineConfig", "RerankEngine", "ScoreOutcome", "load_engine"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ScoreOutcome:
    """Raw scores (``logit_yes - logit_no``) in document order, tokens billed, which docs were cut."""

    raw_scores: list[float]
    prompt_tokens: int
    truncated: list[bool]


class RerankEngine:
    """Scores (query, documents) tasks; safe to call from many coroutines at once."""

    def __init__(
        self, builder: PromptBuilder, batcher: DynamicBatcher, info: BackendInfo, metrics: ServerMetrics, *,
        max_request_tokens: int, score_cache: ScoreCache | None = None,
    ) -> None:
        self.builder = builder
        self.score_cache = score_cache
        self.max_request_tokens = max_request_tokens
        self.batcher = batcher
        self.info = info
        self.metrics = metrics

    @property
    def max_model_len(self) -> int:
        return self.builder.max_model_len

    async def score(self, task: RerankTask, tenant: str | None = None) -> ScoreOutcome:
        (outcome,) = await self.score_all([task], tenant)
        return outcome

    async def score_all(self, tasks: Sequence[RerankTask], tenant: str | None = None) -> list[ScoreOutcome]:
        """Score the tasks of one request; ``tenant`` (who asks, for fair batching) shares turns with its peers.

        Raises :class:`PayloadTooLargeError` when the request's prompt tokens after truncation exceed
        ``max_request_tokens``, once every task is tokenized and before any reaches the model.
        """
        # Identical documents are scored once: cheaper, and equal documents get exactly equal scores
        # (a row's position in a batch can move the last float bits), so ties break by index.
        slots: list[list[int]] = []
        uniques: list[list[str]] = []
        for task in tasks:
            unique: dict[str, int] = {}
            slots.append([unique.setdefault(doc, len(unique)) for doc in task.documents])
            uniques.append(list(unique))
        # Tokenizing 1000 long documents takes tens of milliseconds: keep it off the event loop.
        groups = await asyncio.to_thread(self._build_all, tasks, uniques)
        tokens = [sum(len(g.shared) + len(g.tails[i]) for i in slot) for g, slot in zip(groups, slots, strict=True)]
        if sum(tokens) > self.max_request_tokens:
            raise PayloadTooLargeError(
                f"the request takes {sum(tokens)} prompt tokens after truncation, more than the limit of "
                f"{self.max_request_tokens} (--max-request-tokens); send fewer or shorter documents",
                field="documents")
        raws = await asyncio.gather(*(self._submit(g.shared, g.tails, tenant) for g in groups))
        outcomes: list[ScoreOutcome] = []
        for group, slot, raw, prompt_tokens in zip(groups, slots, raws, tokens, strict=True):
            truncated = [group.truncated[i] for i in slot]
            self.metrics.request_documents.observe(len(slot))
            self.metrics.request_tokens.observe(prompt_tokens)
            self.metrics.truncated_documents_total.inc(sum(truncated))
            outcomes.append(ScoreOutcome([raw[i] for i in slot], prompt_tokens, truncated))
        return outcomes

    async def _submit(self, shared: list[int], tails: list[list[int]], tenant: str | None) -> list[float]:
        """One group's raw scores: from the batcher, through the exact score cache when it is on."""
        async def compute(shared: list[int], tails: list[list[int]]) -> list[float]:
            return await self.batcher.submit(shared, tails, tenant=tenant)

        if self.score_cache is None:
            return await compute(shared, tails)
        return await self.score_cache.score(shared, tails, compute)

    def _build_all(self, tasks: Sequence[RerankTask], uniques: list[list[str]]) -> list[PromptGroup]:
        return [self.builder.build(t.query, docs, t.instruction, t.max_tokens_per_doc)
                for t, docs in zip(tasks, uniques, strict=True)]

    async def close(self) -> None:
        await self.batcher.close()
        self.batcher.backend.close()


def _make_backend(config: EngineConfig, path: Path, tokenizer: Any, max_len: int) -> ScoringBackend:
    yes_id = tokenizer.convert_tokens_to_ids("yes")
    no_id = tokenizer.convert_tokens_to_ids("no")
    kwargs = dict(
        yes_token_id=yes_id, no_token_id=no_id, max_model_len=max_len, device=config.device, dtype=config.dtype
    )
    name = config.backend
    if name == "auto":
        from rerankd.engine.backends.vllm_backend import vllm_available

        name = "vllm" if vllm_available() and config.device in ("auto", "cuda") else "torch"
    if name == "vllm":
        from rerankd.engine.backends.vllm_backend import VllmBackend

        return VllmBackend(path, gpu_memory_utilization=config.gpu_memory_utilization, **kwargs)
    if name == "torch":
        from rerankd.engine.backends.torch_backend import TorchBackend

        return TorchBackend(path, prefix_reuse=config.prefix_reuse, compile=config.compile,
                            compile_cache_dir=config.compile_cache_dir, batch_invariant=config.batch_invariant,
                            **kwargs)
    raise ValueError(f"unknown backend {config.backend!r}: use {', '.join(BACKEND_CHOICES)}")


def load_engine(config: EngineConfig, metrics: ServerMetrics | None = None) -> RerankEngine:
    """Resolve the model (local path or Hugging Face id), load tokenizer and backend. Blocking.

    ``metrics``: the server's; without them (a script, a test) the engine records into a private set.
    """
    from rerankd.engine.model_source import load_tokenizer, model_max_length, resolve_model

    if metrics is None:
        metrics = ServerMetrics()

    path = resolve_model(config.model)
    tokenizer = load_tokenizer(path)
    own_limit = model_max_length(path)
    max_len = min(config.max_model_len, own_limit) if config.max_model_len else own_limit
    if config.max_model_len and config.max_model_len > own_limit:
        log.warning("--max-model-len %d exceeds the model's limit %d; using %d",
                    config.max_model_len, own_limit, max_len)
    backend = _make_backend(config, path, tokenizer, max_len)
    if hasattr(backend, "compiled_kernels_ready"):  # read at each scrape: it turns 1 when the swap happens
        metrics.compiled_kernels_ready.set_function(lambda: float(backend.compiled_kernels_ready))
    score_cache = _make_score_cache(config, path, backend, metrics) if config.score_cache else None
    builder = PromptBuilder(tokenizer, max_len)
    # The budget as configured: the batcher always admits a batch's first row, so a prompt longer than the
    # budget still runs (alone, its memory bounded by the backend's chunking), and no floor is needed.
    batcher = DynamicBatcher(backend, max_batch_tokens=config.max_batch_tokens, max_queue=config.max_queue,
                             metrics=metrics)
    return RerankEngine(builder, batcher, backend.info, metrics, max_request_tokens=config.max_request_tokens,
                        score_cache=score_cache)


def _make_score_cache(config: EngineConfig, path: Path, backend: ScoringBackend, metrics: ServerMetrics) -> ScoreCache:
    """The exact score cache, refused where a cached score could differ from a recomputed one."""
    if not getattr(backend, "batch_invariant", False):
        backend.close()
        raise ValueError("--score-cache needs batch-invariant scores (a pair's score must not depend on what it is "
                         "batched with): use the torch backend with --batch-invariant on (auto = on for CPU)")
    info = backend.info
    kernels = getattr(backend, "kernels", info.name)

    def current_kernels() -> str:
        return str(getattr(backend, "kernels", kernels))

    identity = model_identity(path, info.name, info.dtype, info.device, f"prefix_reuse={config.prefix_reuse}")
    return ScoreCache(identity, current_kernels, config.score_cache_entries, metrics)
