"""The server span of every request: a client's W3C ``traceparent`` continued, or a new trace started.

Installed by :class:`~rerankd.http.middleware.HttpMiddleware` only while tracing is on
(:mod:`rerankd.observability.tracing`), just inside the request-id layer: the span carries the request id,
and every inner layer and log line (the access log included) runs inside it, so their lines carry its ids.
The span is named ``METHOD route`` with the app's bounded route label (a scan of random URLs cannot make
span names without bound). Probes and scrapes (``/health``, ``/ready``, ``/metrics``) are not traced: a gateway
polls every replica's ``/ready`` every few seconds, and a trace per poll would bury the requests.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

from rerankd.http.access_log import RouteLabel
from rerankd.http.asgi import ResponseStatus, header_value
from rerankd.http.request_id import request_id_of
from rerankd.observability import tracing

__all__ = ["UNTRACED_PATHS", "TracingMiddleware"]

UNTRACED_PATHS = frozenset({"/health", "/ready", "/metrics"})


class TracingMiddleware:
    """One ``SpanKind.SERVER`` span per HTTP request, parented to the caller's ``traceparent`` when it sent one."""

    def __init__(self, app: ASGIApp, *, route_label: RouteLabel) -> None:
        self.app = app
        self.route_label = route_label

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("path") in UNTRACED_PATHS:
            await self.app(scope, receive, send)
            return
        route = self.route_label(scope.get("path", ""))
        method = scope.get("method", "")
        parent = tracing.extract(header_value(scope, b"traceparent"), header_value(scope, b"tracestate"))
        attributes = {"http.request.method": method, "http.route": route, "url.path": scope.get("path", ""),
                      "rerankd.request_id": request_id_of(scope)}
        with tracing.server_span(f"{method} {route}", parent, attributes) as current:
            status = ResponseStatus(send)
            try:
                await self.app(scope, receive, status.send)
            finally:
                current.set_attribute("http.response.status_code", status.code)
                if status.code >= 500:
                    tracing.set_error(current, f"answered {status.code}")
