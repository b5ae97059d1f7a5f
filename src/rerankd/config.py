"""Typed settings objects, one per process kind, built from CLI flags and ``RERANKD_*`` env vars.

Why: configuration is read in exactly one place (the CLI) and passed down explicitly; nothing deep
inside reads the environment.
"""

from __future__ import annotations

from pydantic import BaseModel, Field

__all__ = ["ServerSettings"]


class ServerSettings(BaseModel):
    """Everything ``rerankd serve`` can be told."""

    model: str
    served_model_name: str | None = None
    backend: str = "auto"
    device: str = "auto"
    dtype: str = "auto"
    max_model_len: int | None = None
    max_batch_tokens: int = 16384
    max_queue: int = 256
    max_documents: int = 1000
    max_body_bytes: int = 32 * 1024 * 1024
    body_timeout: float = 30.0
    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str | None = Field(None, repr=False)
    prefix_reuse: bool = True
    compile: str = "auto"
    gpu_memory_utilization: float | None = None
    log_level: str = "info"

    @property
    def model_name(self) -> str:
        """The name clients see: ``--served-model-name``, else the last part of ``--model``."""
        if self.served_model_name:
            return self.served_model_name
        return self.model.rstrip("/").split("/")[-1]
