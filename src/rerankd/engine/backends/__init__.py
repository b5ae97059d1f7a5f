"""Scoring runtimes behind one interface (:class:`ScoringBackend`)."""

from rerankd.engine.backends.base import BackendInfo, ScoringBackend, TokenGroup

__all__ = ["BackendInfo", "ScoringBackend", "TokenGroup"]
