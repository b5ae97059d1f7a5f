"""The trace export setting of ``rerankd serve`` and ``rerankd gateway``: one field, one help text, one check.

Why its own module: ``ServerSettings`` and ``GatewaySettings`` inherit it (one flag for both commands), and
the settings are imported by ``--help``, which must not pay for OpenTelemetry; the SDK is imported only when
the flag is given (:func:`rerankd.observability.tracing.configure`).
"""

from __future__ import annotations

from urllib.parse import urlsplit

from pydantic import BaseModel, Field, field_validator

__all__ = ["TracingSettings"]


class TracingSettings(BaseModel):
    """Where this process sends its spans; nowhere by default (tracing off, no cost on the request path)."""

    otlp_endpoint: str | None = Field(
        None, description="Send OpenTelemetry traces to this OTLP/HTTP (protobuf) collector, e.g. "
                          "http://otel-collector:4318 (/v1/traces added when no path is given); needs the "
                          "`otel` extra. Default: tracing off.")

    @field_validator("otlp_endpoint")
    @classmethod
    def _endpoint(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        parts = urlsplit(value.strip())
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"--otlp-endpoint must be http(s)://HOST:PORT[/PATH] (OTLP over HTTP), got {value!r}")
        return value.strip()
