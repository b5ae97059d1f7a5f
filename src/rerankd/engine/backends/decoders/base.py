"""The interface every way of running the Qwen3 decoder implements, so that :class:`TorchBackend` has one loop.

Why: the backend's work — right-padding rows, running the shared prefix once and gathering its cache to
every row, cutting long rows into column chunks, picking each row's last real token, the ``w_yes - w_no``
dot — is the same whichever code runs the transformer layers. A :class:`Decoder` is only that code: one
chunk of rows in, the final hidden state at the wanted tokens out, with a KV cache whose format only it
reads. The backend picks one at load and never asks which it has; a new kernel path is a new module here.
"""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import torch

    from rerankd.engine.backends.base import TokenGroup

__all__ = ["Decoder", "KVCacheHandle", "WarmUpRun"]

# A decoder's KV cache, in its own format (a list of per-layer tensors, a transformers Cache...): the
# backend only passes it back to the decoder that made it.
KVCacheHandle = Any


class WarmUpRun(Protocol):
    """The backend's scoring loop, lent to :meth:`Decoder.warm_up`: scores ``groups`` through ``decoder``
    in column chunks of ``chunk_tokens`` (the backend's own width when None), so that warm-up meets
    exactly the shapes serving will, without changing the backend's settings or the decoder's."""

    def __call__(self, decoder: Decoder, groups: list[TokenGroup], chunk_tokens: int | None = None) -> object:
        ...


class Decoder(ABC):
    """Runs the transformer layers of a Qwen3 model for scoring: a chunk of rows at a time, after a cache."""

    @abstractmethod
    def run_chunk(self, ids: torch.Tensor, positions: torch.Tensor, own_mask: torch.Tensor, *,
                  cache: KVCacheHandle | None, cached_visible: torch.Tensor | None, keep_cache: bool,
                  select: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, KVCacheHandle | None]:
        """One chunk of right-padded rows, after ``cache`` (the shared prefix and/or this row's earlier chunks).

        ``ids``, ``positions``: (rows, T). ``own_mask``: (rows, T), 1 on this chunk's real tokens, 0 on
        padding. ``cached_visible``: (rows, cached positions) boolean, which cached keys each row may attend
        (False on a shorter prefix's padding); None exactly when ``cache`` is None. ``select`` = (row
        indices, column indices): the tokens whose output is wanted (each row's last real token, where it
        falls in this chunk).

        Returns the final-normed hidden states at ``select``, (len(rows), hidden), and the cache extended
        with this chunk when ``keep_cache`` (else None).
        """

    @abstractmethod
    def gather_rows(self, cache: KVCacheHandle, rows: torch.Tensor) -> KVCacheHandle:
        """The cache with row i taken from ``cache``'s row ``rows[i]``: one shared prefix per group,
        expanded to every document of the group. ``cache`` may be consumed."""

    def copy_rows(self, cache: KVCacheHandle, rows: torch.Tensor) -> KVCacheHandle:
        """Like :meth:`gather_rows`, but ``cache`` stays usable: the same prefix is copied to one tail after
        another (batch-invariant scoring). By default a deep copy, gathered."""
        return self.gather_rows(copy.deepcopy(cache), rows)

    def warm_up(self, run: WarmUpRun) -> None:  # noqa: B027 - a decoder with nothing to compile does nothing
        """Prepare now what would otherwise make the first requests wait (compiling kernels). Nothing by default."""
