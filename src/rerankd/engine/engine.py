"""The engine: prompt building → dynamic batcher → backend, for one loaded model and its task.

Why one object: the HTTP layer needs a single awaitable — "score these documents for this query", or
"embed these texts" — and must not know about tokenizers, token budgets or devices. One engine knows both
tasks (``task``: ``rerank`` or ``embed``, from the model or ``--task``); an embedding engine runs the same
batcher (token budget, tenant turns), the same truncation limits and the same backend loop, and returns
each input's last-token hidden state instead of a score (:meth:`RerankEngine.embed_all`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from rerankd.engine.backends.base import BackendInfo, ScoringBackend
from rerankd.engine.batcher import DynamicBatcher
from rerankd.engine.bulk import start_tokenizer_pool
from rerankd.engine.config import BACKEND_CHOICES, EngineConfig
from rerankd.engine.embedding import EmbeddingPromptBuilder, detect_task, finish_vectors, format_query
from rerankd.engine.prompt import PromptBuilder, PromptGroup
from rerankd.engine.score_cache import ScoreCache, model_identity
from rerankd.errors import BadRequestError, PayloadTooLargeError
from rerankd.observability import tracing
from rerankd.observability.metrics import ServerMetrics
from rerankd.protocol import RerankTask

__all__ = ["EmbedOutcome", "EngineConfig", "RerankEngine", "ScoreOutcome", "load_engine"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ScoreOutcome:
    """Raw scores (``logit_yes - logit_no``) in document order, tokens billed, which docs were cut; for a
    chunked task (``max_chunks_per_doc``), each score is its document's best chunk's, named in ``chunk_index``."""

    raw_scores: list[float]
    prompt_tokens: int
    truncated: list[bool]
    chunk_index: list[int] | None = None


@dataclass(frozen=True)
class EmbedOutcome:
    """Unit vectors (rows, in input order, float32), tokens billed, which inputs were cut."""

    vectors: np.ndarray
    prompt_tokens: int
    truncated: list[bool]


class RerankEngine:
    """Scores (query, documents) tasks, or embeds texts (``task == "embed"``); safe to call from many coroutines."""

    def __init__(
        self, builder: PromptBuilder, batcher: DynamicBatcher, info: BackendInfo, metrics: ServerMetrics, *,
        max_request_tokens: int, task: Literal["rerank", "embed"] = "rerank",
        embedder: EmbeddingPromptBuilder | None = None, dimensions: int | None = None,
        prompts: dict[str, str] | None = None, score_cache: ScoreCache | None = None,
    ) -> None:
        self.builder = builder
        self.score_cache = score_cache
        self.max_request_tokens = max_request_tokens
        self.batcher = batcher
        self.info = info
        self.metrics = metrics
        self.task = task
        self.embedder = embedder
        self.dimensions = dimensions
        """The model's vector size (its hidden size) for an embedding engine; None for a reranker."""
        self.prompts = prompts or {}
        """The model's named prompts (sentence-transformers' ``prompts``: ``query``, ``document``...)."""

    @property
    def max_model_len(self) -> int:
        return self.builder.max_model_len

    async def score(self, task: RerankTask, tenant: str | None = None, *, priority: int = 0) -> ScoreOutcome:
        (outcome,) = await self.score_all([task], tenant, priority=priority)
        return outcome

    async def score_all(self, tasks: Sequence[RerankTask], tenant: str | None = None, *,
                        priority: int = 0) -> list[ScoreOutcome]:
        """Score the tasks of one request; ``tenant`` (who asks, for fair batching) shares turns with its peers.

        ``priority``: lower is served first, strictly (:meth:`DynamicBatcher.submit`); default 0.

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
        with tracing.span("rerankd.tokenize") as current:
            if current is not None:
                current.set_attribute("rerankd.documents", sum(len(u) for u in uniques))
            groups = await asyncio.to_thread(self._build_all, tasks, uniques)
        tokens = [sum(per_doc[i] for i in slot) for per_doc, slot in
                  zip((g.document_tokens() for g in groups), slots, strict=True)]
        if sum(tokens) > self.max_request_tokens:
            raise PayloadTooLargeError(
                f"the request takes {sum(tokens)} prompt tokens after truncation, more than the limit of "
                f"{self.max_request_tokens} (--max-request-tokens); send fewer or shorter documents",
                field="documents")
        raws = await asyncio.gather(*(self._submit(g.shared, g.tails, tenant, priority) for g in groups))
        outcomes: list[ScoreOutcome] = []
        for group, slot, raw, prompt_tokens in zip(groups, slots, raws, tokens, strict=True):
            truncated = [group.truncated[i] for i in slot]
            self.metrics.request_documents.labels(task="rerank").observe(len(slot))
            self.metrics.request_tokens.labels(task="rerank").observe(prompt_tokens)
            self.metrics.truncated_documents_total.inc(sum(truncated))
            scores, winners = group.best_chunks(raw)  # a chunked document's chunks come back as its own tails
            outcomes.append(ScoreOutcome([scores[i] for i in slot], prompt_tokens, truncated,
                                         None if winners is None else [winners[i] for i in slot]))
        return outcomes

    async def _submit(self, shared: list[int], tails: list[list[int]], tenant: str | None,
                      priority: int) -> list[float]:
        """One group's raw scores: from the batcher, through the exact score cache when it is on."""
        async def compute(shared: list[int], tails: list[list[int]]) -> list[float]:
            return await self.batcher.submit(shared, tails, tenant=tenant, priority=priority)

        if self.score_cache is None:
            return await compute(shared, tails)
        return await self.score_cache.score(shared, tails, compute)

    def _build_all(self, tasks: Sequence[RerankTask], uniques: list[list[str]]) -> list[PromptGroup]:
        return [self.builder.build(t.query, docs, t.instruction, t.max_tokens_per_doc,
                                   direction=t.truncation_direction, max_prompt_tokens=t.max_prompt_tokens,
                                   max_chunks=t.max_chunks_per_doc, chunk_overlap=t.chunk_overlap_tokens)
                for t, docs in zip(tasks, uniques, strict=True)]

    async def embed_all(
        self,
        inputs: Sequence[str | Sequence[int]],
        *,
        is_query: bool = False,
        instruction: str | None = None,
        prompt: str | None = None,
        dimensions: int | None = None,
        normalize: bool = True,
        truncate: bool = True,
        truncation_direction: Literal["right", "left"] = "right",
        tenant: str | None = None,
        priority: int = 0,
    ) -> EmbedOutcome:
        """Embed the inputs of one request (texts, or token-id lists of the text's tokens).

        Queries (``is_query``) are formatted as the model card's ``Instruct: {instruction}\nQuery:{text}``
        (``instruction`` defaults to the card's web-search task); ``prompt`` instead puts a literal prefix before
        every input (a named prompt, TEI's ``prompt_name``). Documents get nothing. ``dimensions``: Matryoshka
        truncation, then re-normalisation (the caller checks the range). ``priority``: as for :meth:`score_all`.
        Raises :class:`PayloadTooLargeError`
        past ``max_request_tokens``, before any forward pass.
        """
        if self.embedder is None:
            raise BadRequestError("this server serves a reranker, not an embedding model; use the rerank routes")
        if prompt is None:
            prompt = format_query("", instruction) if is_query else ""
        unique: dict[Any, int] = {}
        slots = [unique.setdefault(i if isinstance(i, str) else tuple(i), len(unique)) for i in inputs]
        uniques = [k if isinstance(k, str) else list(k) for k in unique]
        with tracing.span("rerankd.tokenize", attributes={"rerankd.documents": len(uniques)}):
            group = await asyncio.to_thread(self.embedder.build, uniques, prefix=prompt, truncate=truncate,
                                            direction=truncation_direction)
        per_input = group.tokens
        tokens = sum(per_input[i] for i in slots)
        if tokens > self.max_request_tokens:
            raise PayloadTooLargeError(
                f"the request takes {tokens} tokens after truncation, more than the limit of "
                f"{self.max_request_tokens} (--max-request-tokens); send fewer or shorter inputs", field="input")
        hidden = (await self.batcher.submit(group.shared, group.tails, tenant=tenant, priority=priority)
                  if uniques else [])
        width = self.dimensions or 0
        stacked = np.stack(hidden) if hidden else np.zeros((0, width), dtype=np.float32)
        vectors = finish_vectors(stacked, dimensions, normalize)[slots] if slots else stacked[:0]
        truncated = [group.truncated[i] for i in slots]
        self.metrics.request_documents.labels(task="embed").observe(len(slots))
        self.metrics.request_tokens.labels(task="embed").observe(tokens)
        self.metrics.truncated_documents_total.inc(sum(truncated))
        return EmbedOutcome(vectors, tokens, truncated)

    async def close(self) -> None:
        await self.batcher.close()
        self.batcher.backend.close()


def _make_backend(config: EngineConfig, path: Path, tokenizer: Any, max_len: int, task: str = "rerank") -> Any:
    yes_id = tokenizer.convert_tokens_to_ids("yes")
    no_id = tokenizer.convert_tokens_to_ids("no")
    kwargs = dict(
        yes_token_id=yes_id, no_token_id=no_id, max_model_len=max_len, device=config.device, dtype=config.dtype,
        task=task,
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

        # `auto`: invariant where the exact score cache needs it (a hit must be the bits a recomputation gives).
        invariant = "on" if config.batch_invariant == "auto" and config.score_cache else config.batch_invariant
        return TorchBackend(path, prefix_reuse=config.prefix_reuse, compile=config.compile,
                            compile_cache_dir=config.compile_cache_dir, batch_invariant=invariant, **kwargs)
    raise ValueError(f"unknown backend {config.backend!r}: use {', '.join(BACKEND_CHOICES)}")


def load_engine(config: EngineConfig, metrics: ServerMetrics | None = None) -> RerankEngine:
    """Resolve the model (local path or Hugging Face id), load tokenizer and backend. Blocking.

    ``metrics``: the server's; without them (a script, a test) the engine records into a private set.
    """
    from rerankd.engine.model_source import load_tokenizer, model_max_length, resolve_model

    if metrics is None:
        metrics = ServerMetrics()

    path = resolve_model(config.model, revision=config.revision)
    tokenizer = load_tokenizer(path)
    own_limit = model_max_length(path)
    max_len = min(config.max_model_len, own_limit) if config.max_model_len else own_limit
    if config.max_model_len and config.max_model_len > own_limit:
        log.warning("--max-model-len %d exceeds the model's limit %d; using %d",
                    config.max_model_len, own_limit, max_len)
    task = detect_task(path) if config.task == "auto" else config.task
    log.info("task: %s (%s)", task, "from the model's files" if config.task == "auto" else "--task")
    backend = _make_backend(config, path, tokenizer, max_len, task)
    if hasattr(backend, "compiled_kernels_ready"):  # read at each scrape: it turns 1 when the swap happens
        metrics.compiled_kernels_ready.set_function(lambda: float(backend.compiled_kernels_ready))
    score_cache = _make_score_cache(config, path, backend, metrics) if config.score_cache and task != "embed" else None
    bulk_nice = config.bulk_nice if getattr(backend, "takes_concurrent_passes", False) else 0
    if bulk_nice:
        # Before the prompt builder, whose first batch call would start the tokenizer's pool at this priority.
        start_tokenizer_pool(tokenizer, bulk_nice)
    builder = PromptBuilder(tokenizer, max_len)
    # The budget as configured: the batcher always admits a batch's first row, so a prompt longer than the
    # budget still runs (alone, its memory bounded by the backend's chunking), and no floor is needed.
    batcher = DynamicBatcher(backend, max_batch_tokens=config.max_batch_tokens, max_queue=config.max_queue,
                             metrics=metrics, forward=backend.embed if task == "embed" else None, bulk_nice=bulk_nice)
    if task != "embed":
        return RerankEngine(builder, batcher, backend.info, metrics, max_request_tokens=config.max_request_tokens,
                            score_cache=score_cache)
    from rerankd.engine.embedding import model_prompts

    return RerankEngine(builder, batcher, backend.info, metrics, max_request_tokens=config.max_request_tokens,
                        task="embed", embedder=EmbeddingPromptBuilder(tokenizer, max_len),
                        dimensions=getattr(backend, "hidden_size", 0) or _config_hidden_size(path),
                        prompts=model_prompts(path))


def _config_hidden_size(path: Path) -> int:
    import json

    return int(json.loads((path / "config.json").read_text(encoding="utf-8"))["hidden_size"])


def _make_score_cache(config: EngineConfig, path: Path, backend: ScoringBackend, metrics: ServerMetrics) -> ScoreCache:
    """The exact score cache, refused where a cached score could differ from a recomputed one."""
    if not getattr(backend, "batch_invariant", False):
        backend.close()
        raise ValueError("--score-cache needs batch-invariant scores (a pair's score must not depend on what it is "
                         "batched with): use the torch backend with --batch-invariant on or auto")
    info = backend.info
    kernels = getattr(backend, "kernels", info.name)

    def current_kernels() -> str:
        return str(getattr(backend, "kernels", kernels))

    identity = model_identity(path, info.name, info.dtype, info.device, f"prefix_reuse={config.prefix_reuse}")
    return ScoreCache(identity, current_kernels, config.score_cache_entries, metrics)
