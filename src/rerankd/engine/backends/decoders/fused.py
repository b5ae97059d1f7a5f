"""The fused Qwen3 forward (:mod:`rerankd.engine.backends.qwen3_forward`) behind the :class:`Decoder` interface.

Its cache is a plain list of per-layer (key, value) tensors, so gathering the shared prefix to rows is one
``index_select`` per tensor. Compiled, it needs a warm-up: inductor builds its kernels on first use.
"""

from __future__ import annotations

import torch

from rerankd.engine.backends.base import TokenGroup
from rerankd.engine.backends.decoders.base import Decoder, WarmUpRun
from rerankd.engine.backends.qwen3_forward import FusedQwen3Forward, KVCache, split_attention_supported

__all__ = ["FusedDecoder"]

# 40 tokens: two tails after it reuse 40 >= TorchBackend's 32-token threshold, so they take the cached path.
_WARM_UP_PREFIX = list(range(100, 140))


class FusedDecoder(Decoder):
    """Runs ``forward``; the backend's masks become the fused forward's ``past_visible`` (it applies causality
    within a chunk itself, so this chunk's own padding needs no mask: a real token never sees it)."""

    def __init__(self, forward: FusedQwen3Forward) -> None:
        self.forward = forward

    def run_chunk(self, ids: torch.Tensor, positions: torch.Tensor, own_mask: torch.Tensor, *,
                  cache: KVCache | None, cached_visible: torch.Tensor | None, keep_cache: bool,
                  select: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, KVCache | None]:
        return self.forward(ids, positions, cached_visible, past=cache, keep_cache=keep_cache, select=select)

    def gather_rows(self, cache: KVCache, rows: torch.Tensor) -> KVCache:
        return [(k.index_select(0, rows), v.index_select(0, rows)) for k, v in cache]

    def copy_rows(self, cache: KVCache, rows: torch.Tensor) -> KVCache:
        return self.gather_rows(cache, rows)  # index_select copies: ``cache`` is left as it was

    def warm_up(self, run: WarmUpRun) -> None:
        """Compile the kernels now, for the shapes a server meets (1 and several rows, with and without a
        cached prefix), so that the first clients do not wait on inductor."""
        if not self.forward.compiled:
            return
        prefix = _WARM_UP_PREFIX
        run(self, [TokenGroup(prefix, [[7, 8, 9], [7, 8, 9, 10, 11]])])  # prefix once, 2 tails after it
        run(self, [TokenGroup(prefix, [[7, 8, 9, 10]])])  # one plain row
        run(self, [TokenGroup([1, 2], [[7, 8, 9], [7, 8]])])  # several plain rows
        # Long documents run in column chunks, where one row of several may end in a chunk (the last layer's
        # selected queries then number 1 beside 2+ rows: a shape class of its own for the compiler), and
        # chunks of >= split_min_columns after a cache take the split attention: a twin that takes it for
        # every chunk after a cache runs tiny chunks (same kernels, process-wide: nothing here is changed).
        chunked = self
        if split_attention_supported(self.forward.device):
            chunked = FusedDecoder(FusedQwen3Forward(self.forward.body, compile_kernels=True, split_min_columns=1))
        run(chunked, [TokenGroup(prefix, [[7, 8, 9], [7, 8, 9, 10, 11, 12]])], chunk_tokens=4)
        run(chunked, [TokenGroup(prefix, [[7, 8, 9, 10, 11, 12]])], chunk_tokens=4)  # one row, chunked
