"""The interface every scoring runtime implements.

Why: the batcher and the HTTP layer never know which runtime computes a score. A backend takes
already-tokenized prompt groups (a shared prefix plus per-document tails) and returns the raw
score ``logit_yes - logit_no`` of each tail, in order.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, TypeVar, runtime_checkable

__all__ = ["BackendInfo", "EmbeddingBackend", "ScoringBackend", "TokenGroup", "split_by_group"]

T = TypeVar("T")


@dataclass(frozen=True)
class TokenGroup:
    """Prompts sharing ``shared``: prompt i is ``shared + tails[i]``."""

    shared: list[int]
    tails: list[list[int]]

    @property
    def tokens(self) -> int:
        return sum(len(self.shared) + len(t) for t in self.tails)


@dataclass(frozen=True)
class BackendInfo:
    """What a backend reports about itself for ``/info`` and logs."""

    name: str
    device: str
    dtype: str
    max_model_len: int


@runtime_checkable
class ScoringBackend(Protocol):
    """A runtime that scores token groups. ``score`` is called from one worker thread at a time, or from two
    where the backend's ``takes_concurrent_passes`` is true (the batcher's bulk lane)."""

    info: BackendInfo

    def score(self, groups: list[TokenGroup]) -> list[list[float]]:
        """Return ``logit_yes - logit_no`` for every tail of every group."""
        ...

    def close(self) -> None:
        """Release devices and memory."""
        ...


@runtime_checkable
class EmbeddingBackend(Protocol):
    """A runtime that embeds token groups (the ``embed`` task). ``embed`` is called as ``score`` is."""

    info: BackendInfo
    hidden_size: int

    def embed(self, groups: list[TokenGroup]) -> list[list[Any]]:
        """Return every tail's final hidden state at its last token (a float32 vector, not normalised)."""
        ...

    def close(self) -> None:
        """Release devices and memory."""
        ...


def split_by_group(flat: list[T], groups: list[TokenGroup]) -> list[list[T]]:
    """Cut results computed row by row over all groups back into one list per group."""
    out: list[list[T]] = []
    i = 0
    for g in groups:
        out.append(flat[i : i + len(g.tails)])
        i += len(g.tails)
    return out
