"""OpenTelemetry traces: one switch for the whole process, and spans that cost nothing while it is off.

Why a module of our own between the code and the OpenTelemetry API: tracing is off by default
(``--otlp-endpoint`` turns it on), and off must mean *no cost* on the request path. Even the API's no-op
tracer builds a span object and attaches a context for every ``with`` block; :func:`span` instead hands back
one shared :class:`contextlib.nullcontext` while no exporter is configured, so an instrumented line costs a
global read (``bench/tracing_overhead.py`` measures it, docs/observability.md has the numbers).

What is traced, and how the pieces meet: the HTTP layer (:class:`rerankd.http.tracing.TracingMiddleware`)
continues a client's W3C ``traceparent`` (or starts a trace) with a server span per request; the gateway
opens a span per step and a client span per attempt at a replica, whose ``traceparent`` it sends
(:func:`inject`); the replica continues it, and its batcher records each request's queue wait and batches
with :func:`record_span` (the worker task serves many requests at once, so those spans name their parent
explicitly). The SDK and the OTLP/HTTP exporter are the ``otel`` extra, imported only by :func:`configure`.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Callable, Iterator, Mapping, MutableMapping
from typing import Any
from urllib.parse import urlsplit

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from rerankd import __version__

__all__ = ["Context", "Span", "SpanKind", "TracingUnavailableError", "configure", "configure_process",
           "current_context", "enabled", "extract", "ids_of_current", "inject", "record_span", "server_span",
           "set_error", "shutdown", "span", "traces_url"]

_tracer: Tracer | None = None
_shutdown: Callable[[], None] | None = None
_NULL: contextlib.nullcontext[None] = contextlib.nullcontext()
_W3C = TraceContextTextMapPropagator()  # W3C Trace Context only: what every tracer and mesh speaks
_TRACES_PATH = "/v1/traces"


class TracingUnavailableError(RuntimeError):
    """``--otlp-endpoint`` was given but the SDK or exporter is not installed (the ``otel`` extra)."""


def enabled() -> bool:
    """Whether spans are recorded and exported in this process."""
    return _tracer is not None


def span(name: str, *, kind: SpanKind = SpanKind.INTERNAL,
         attributes: Mapping[str, Any] | None = None) -> contextlib.AbstractContextManager[Span | None]:
    """A span around the block, current inside it, that records an exception raised through it; yields
    None (and costs nothing) when tracing is off."""
    if _tracer is None:
        return _NULL
    return _tracer.start_as_current_span(name, kind=kind, attributes=attributes)


@contextlib.contextmanager
def server_span(name: str, parent: Context, attributes: Mapping[str, Any]) -> Iterator[Span]:
    """The span of one HTTP request, continuing ``parent`` (the caller's ``traceparent``). Only called while
    tracing is on (the middleware is not installed otherwise)."""
    assert _tracer is not None
    with _tracer.start_as_current_span(name, context=parent, kind=SpanKind.SERVER, attributes=attributes,
                                       record_exception=False, set_status_on_exception=False) as current:
        yield current


def current_context() -> Context | None:
    """The current context, to parent spans recorded later by another task (None when tracing is off)."""
    return otel_context.get_current() if _tracer is not None else None


def record_span(name: str, parent: Context, start_ns: int, end_ns: int, attributes: Mapping[str, Any]) -> None:
    """A finished span with its own times (``time.time_ns()``), under ``parent``: for work done on behalf of a
    request by a task that is not the request's own (the batcher's worker)."""
    if _tracer is None:
        return
    done = _tracer.start_span(name, context=parent, start_time=start_ns, attributes=attributes)
    done.end(end_time=end_ns)


def extract(traceparent: str | None, tracestate: str | None) -> Context:
    """The caller's trace context from its W3C headers (an empty context, so a new trace, when absent or bad)."""
    carrier = {}
    if traceparent:
        carrier["traceparent"] = traceparent
        if tracestate:
            carrier["tracestate"] = tracestate
    return _W3C.extract(carrier)


def inject(headers: MutableMapping[str, str]) -> None:
    """Add the current span's ``traceparent`` (and ``tracestate``) to outgoing ``headers``; nothing when off."""
    if _tracer is not None:
        _W3C.inject(headers)


def set_error(current: Span | None, description: str) -> None:
    """Mark a span failed without an exception (a 5xx answer, an attempt that failed over)."""
    if current is not None:
        current.set_status(Status(StatusCode.ERROR, description))


def ids_of_current() -> tuple[str, str] | None:
    """The current span's (trace id, span id) in hex, for log lines; None outside a recorded span or when off."""
    if _tracer is None:
        return None
    context = trace.get_current_span().get_span_context()
    if not context.is_valid:
        return None
    return format(context.trace_id, "032x"), format(context.span_id, "016x")


def traces_url(endpoint: str) -> str:
    """``--otlp-endpoint`` as the exporter's URL: a bare collector address gets OTLP/HTTP's ``/v1/traces``."""
    parts = urlsplit(endpoint)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"bad --otlp-endpoint {endpoint!r}: use http(s)://HOST:PORT (OTLP over HTTP, e.g. :4318)")
    return endpoint if parts.path not in ("", "/") else endpoint.rstrip("/") + _TRACES_PATH


def configure(endpoint: str, service_name: str, attributes: Mapping[str, Any] | None = None) -> None:
    """Export this process's spans to ``endpoint`` (OTLP over HTTP, protobuf) in batches from a background
    thread. Call before the app is built. ``OTEL_SERVICE_NAME`` and ``OTEL_RESOURCE_ATTRIBUTES`` win over the
    defaults given here; ``OTEL_BSP_*`` tune the batching and ``OTEL_EXPORTER_OTLP_HEADERS`` adds headers
    (the SDK reads them). :func:`shutdown` flushes what is left."""
    global _tracer, _shutdown
    url = traces_url(endpoint)
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import OTELResourceDetector, Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError as exc:
        raise TracingUnavailableError(
            f"--otlp-endpoint needs the OpenTelemetry SDK and OTLP exporter ({exc.name} is missing): "
            "pip install 'rerankd[otel]'") from None
    defaults: dict[str, Any] = {"service.name": service_name, "service.namespace": "rerankd",
                                "service.version": __version__, "host.name": socket.gethostname(),
                                "process.pid": os.getpid(), **(attributes or {})}
    # The SDK's own attributes (telemetry.sdk.*), ours over them, then the operator's environment over ours.
    resource = Resource.create(defaults).merge(OTELResourceDetector().detect())
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=url)))
    _tracer = provider.get_tracer("rerankd", __version__)
    _shutdown = provider.shutdown


def configure_process(endpoint: str, service_name: str, port: int,
                      attributes: Mapping[str, Any] | None = None) -> None:
    """:func:`configure` for a serving process: ``service.instance.id`` is ``HOST:PORT`` (a pod's name is its
    host name, and two replicas on one machine differ by port)."""
    configure(endpoint, service_name, {"service.instance.id": f"{socket.gethostname()}:{port}", **(attributes or {})})


def shutdown() -> None:
    """Flush the spans not yet exported and stop exporting (at process exit); a no-op when off."""
    global _tracer, _shutdown
    stop, _shutdown, _tracer = _shutdown, None, None
    if stop is not None:
        stop()
