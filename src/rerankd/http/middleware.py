"""The middleware every rerankd HTTP app runs, composed in one fixed order.

One Starlette middleware entry, so each app adds the whole room with one ``app.add_middleware(HttpMiddleware,
...)`` call and cannot get the order wrong (Starlette runs separately added middleware in reverse order of
adding). Outermost first, each layer a module with one job:

1. :class:`RequestIdMiddleware`: the request id, first, so every later layer and log line has it.
   Then, only while tracing is on, :class:`TracingMiddleware`: the request's server span (``traceparent``).
2. :class:`SecurityHeadersMiddleware`: on every answer, refusals included.
3. :class:`AccessLogMiddleware`: the log line and metrics, outside every layer that can refuse.
4. :class:`HeaderRulesMiddleware`: 400 for a repeated ``Host`` or ``Authorization``.
5. :class:`ConcurrencyLimitMiddleware`: 503 past ``max_concurrent_requests`` in flight (probes exempt).
6. :class:`BodyLimitMiddleware`: 413 on a declared length before anything else is checked; 413/408 while
   the body streams in (silence and total deadline).
7. :class:`ApiKeyMiddleware`: only when the app has one key (the server's ``--api-key``).
8. :class:`JsonBodyMiddleware`: POST bodies are parsed as JSON.

Header size and count, the time to send headers and idle keep-alive connections are not here: uvicorn
has parsed every header before an app is called, so those limits live in the connection's protocol
(:mod:`rerankd.http.protocol`, configured by :func:`rerankd.http.serving.uvicorn_config`).
"""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

from rerankd.http.access_log import AccessLogMiddleware, HttpMetrics, LogFields, RouteLabel
from rerankd.http.api_key import ApiKeyMiddleware
from rerankd.http.body_limits import BodyLimitMiddleware
from rerankd.http.concurrency import ConcurrencyLimitMiddleware
from rerankd.http.header_rules import HeaderRulesMiddleware
from rerankd.http.json_body import JsonBodyMiddleware
from rerankd.http.request_id import RequestIdMiddleware, request_id_of
from rerankd.http.security_headers import SecurityHeadersMiddleware
from rerankd.http.tracing import TracingMiddleware
from rerankd.observability import tracing

__all__ = ["HttpMiddleware", "request_id_of"]


class HttpMiddleware:
    """Request id, security headers, access log and metrics, single headers, requests in flight, body cap
    and timeouts, optional API key."""

    def __init__(
        self, app: ASGIApp, *, route_label: RouteLabel, max_body_bytes: int, body_timeout: float,
        body_deadline: float | None = None, max_concurrent_requests: int | None = None,
        metrics: HttpMetrics | None = None, access_log_fields: LogFields | None = None,
        api_key: str | None = None, public_paths: frozenset[str] = frozenset(),
        task_label: RouteLabel | None = None,
    ) -> None:
        """``route_label`` bounds the ``route`` label (see :func:`known_routes_label`); ``task_label`` names the
        task of a route label (the metrics' ``task`` label; none: ``""``); ``access_log_fields``
        adds the app's own fields to each access-log line; ``public_paths`` need no ``api_key``. No
        ``body_deadline`` or ``max_concurrent_requests``: no such limit."""
        inner: ASGIApp = JsonBodyMiddleware(app)
        if api_key:
            inner = ApiKeyMiddleware(inner, api_key=api_key, public_paths=public_paths)
        inner = BodyLimitMiddleware(inner, max_bytes=max_body_bytes, timeout=body_timeout, deadline=body_deadline)
        if max_concurrent_requests is not None:
            inner = ConcurrencyLimitMiddleware(inner, limit=max_concurrent_requests)
        inner = HeaderRulesMiddleware(inner)
        inner = AccessLogMiddleware(inner, route_label=route_label, metrics=metrics, log_fields=access_log_fields,
                                    task_label=task_label)
        inner = SecurityHeadersMiddleware(inner)
        if tracing.enabled():  # decided when the app is built: no layer at all while tracing is off
            inner = TracingMiddleware(inner, route_label=route_label)
        self._stack = RequestIdMiddleware(inner)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._stack(scope, receive, send)
