"""Everything ``rerankd serve`` can be told: one typed object, the only source of each default.

Why one object: the ``serve`` flags (their defaults, ranges, choices and help, see
:func:`rerankd.options.settings_options`), ``rerankd up``'s forwarded flags, the app and the tests all read
:class:`ServerSettings`. The engine's fields come from :class:`~rerankd.engine.config.EngineConfig`, which
this extends, and :meth:`ServerSettings.engine_config` hands the engine exactly its part.

Flags and ``RERANKD_<FLAG>`` variables are read by click (flags win), not by pydantic-settings: one parser
for both, the one ``--help`` documents, and a ``ServerSettings(...)`` built in code never reads the
environment behind its caller's back.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field, field_validator

from rerankd.allocator import MallocChoice
from rerankd.edge_settings import DEFAULT_MAX_REQUEST_CHARS, EdgeSettings
from rerankd.engine.config import EngineConfig
from rerankd.observability.logging import LogFormat, LogLevel
from rerankd.observability.tracing_settings import TracingSettings

__all__ = ["ServerSettings"]


class ServerSettings(EngineConfig, EdgeSettings, TracingSettings):
    """The inference server's configuration. Field names are the long flags in snake case; a field with
    ``repr=False`` is a secret, whose value ``--help`` never shows. The connection limits (head size and
    time, idle keep-alive, trusted proxies) are :class:`~rerankd.edge_settings.EdgeSettings`' fields."""

    served_model_name: tuple[str, ...] = Field(
        (), description="A name clients use in `model`; repeat for several (the first is the one answers report; "
                        "default: last part of --model).")
    strict_model_names: bool = Field(
        False, description="Answer 404 to a `model` not served here (default: accept any `model`, answer with the "
                           "served name).")
    max_documents: int = Field(1000, ge=1, description="Documents allowed per request.")
    max_chunks_per_request: int = Field(
        10_000, ge=1, description="Documents x max_chunks_per_doc one chunked rerank request may ask for (Cohere's "
                                  "cap; 413 past it).")
    max_request_chars: int = Field(
        DEFAULT_MAX_REQUEST_CHARS, ge=1,
        description="Characters of query, instruction and documents one request may send (413 past it, checked "
                    "before validation and tokenizing; ~2M English tokens).")
    max_body_bytes: int = Field(32 * 1024 * 1024, ge=1024, description="Largest request body accepted (413 past it).")
    body_timeout: float = Field(
        30.0, ge=0.1, description="Seconds a client may stall while sending its body before a 408 (slowloris guard).")
    max_concurrent_requests: int = Field(
        512, ge=1, description="Requests in flight at once; more get 503 with Retry-After (/health, /ready, "
                               "/metrics exempt).")
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    api_key: str | None = Field(
        None, repr=False, description="Require `Authorization: Bearer KEY` on every route but /health, /ready, "
                                      "/metrics.")
    malloc: MallocChoice = Field(
        "auto", description="Memory allocator: the process re-executes itself with tcmalloc/jemalloc preloaded "
                            "(glibc's page faults slow the CPU forward ~20%). auto = tcmalloc, else jemalloc, else "
                            "glibc with a warning; no change with --backend vllm or --device cuda.")
    log_level: LogLevel = "info"
    log_format: LogFormat = "auto"
    log_file: str | None = Field(None, description="Also write logs to this file, rotated at 50 MB.")

    @field_validator("served_model_name", mode="before")
    @classmethod
    def _names(cls, value: Any) -> Any:
        """One name (``served_model_name="x"``, as code wrote it before names could repeat) or several; blank
        names dropped, repeats kept once, in order."""
        if value is None:
            return ()
        names = [value] if isinstance(value, str) else value
        if not isinstance(names, list | tuple) or not all(isinstance(n, str) for n in names):
            return value  # pydantic names the type error
        return tuple(dict.fromkeys(n.strip() for n in names if n.strip()))

    @property
    def served_model_names(self) -> tuple[str, ...]:
        """Every name this server answers to: ``--served-model-name`` (each), else the last part of ``--model``."""
        return self.served_model_name or (self.model.rstrip("/").split("/")[-1],)

    @property
    def model_name(self) -> str:
        """The name clients see in answers: the first ``--served-model-name``, else the last part of ``--model``."""
        return self.served_model_names[0]

    def engine_config(self) -> EngineConfig:
        """The engine's part of these settings, and nothing of the HTTP server's."""
        return EngineConfig(**self.model_dump(include=set(EngineConfig.model_fields)))
