"""transformers' own ``Qwen3Model`` forward, with its ``DynamicCache``.

Why keep it beside the fused forward: it is the reference the fused one is tested against, and the path
for what that one does not run — ``--compile off``, CUDA under ``--compile auto``, sliding-window
configurations, a machine without a C++ compiler — and for benchmarks that patch transformers' modules.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch

from rerankd.engine.backends.decoders.base import Decoder

__all__ = ["TransformersDecoder"]


class TransformersDecoder(Decoder):
    """Runs ``body`` (a transformers ``Qwen3Model``) with a 2-D attention mask and its own cache object."""

    def __init__(self, body: Any) -> None:
        self.body = body
        # transformers 5.x renamed the KV-cache argument and output field `past_key_values` → `cache`
        # (the old name warns and goes away in 5.40); use whichever this version's forward takes.
        self._cache_kwarg = "cache" if "cache" in inspect.signature(body.forward).parameters else "past_key_values"

    def run_chunk(self, ids: torch.Tensor, positions: torch.Tensor, own_mask: torch.Tensor, *,
                  cache: Any, cached_visible: torch.Tensor | None, keep_cache: bool,
                  select: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, Any]:
        # transformers takes one mask over cached + own keys and applies causality within the chunk itself.
        mask = own_mask if cached_visible is None else torch.cat([cached_visible.to(own_mask.dtype), own_mask], dim=1)
        out = self.body(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=keep_cache,
                        **{self._cache_kwarg: cache})
        rows, cols = select
        return out.last_hidden_state[rows, cols], (getattr(out, self._cache_kwarg) if keep_cache else None)

    def gather_rows(self, cache: Any, rows: torch.Tensor) -> Any:
        cache.batch_select_indices(rows)  # in place: the prefix's cache becomes the rows'
        return cache
