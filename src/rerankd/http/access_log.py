"""One log line and two metric samples per request: route, task, method, status, latency, request id.

The room knows no app's routes or callers: the app says how a path becomes a ``route`` label
(``route_label``; bounded, so a scan of random URLs cannot blow up the label set), which task a route label
serves (``task_label``: ``rerank``, ``embed``, or ``""`` for neither) and may add fields of its own to the log
line (``log_fields``: the gateway adds the caller's key name).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from prometheus_client import Counter, Histogram
from starlette.types import ASGIApp, Receive, Scope, Send

from rerankd.http.asgi import ResponseStatus
from rerankd.http.request_id import request_id_of

__all__ = ["AccessLogMiddleware", "HttpMetrics", "LogFields", "RouteLabel", "known_routes_label"]

log = logging.getLogger("rerankd.access")

RouteLabel = Callable[[str], str]
"""A request path → its ``route`` label; must map unbounded input onto a bounded set."""
LogFields = Callable[[Scope], Mapping[str, Any]]
"""A finished request's scope → extra fields for its access-log line."""


class HttpMetrics(Protocol):
    """What the access log counts into: both ``ServerMetrics`` and ``GatewayMetrics`` have these, labelled
    ``route``, ``status`` (the counter only) and ``task``."""

    requests_total: Counter
    request_duration_seconds: Histogram


def known_routes_label(known: frozenset[str], groups: Mapping[str, str] | None = None) -> RouteLabel:
    """A :data:`RouteLabel`: a known path is its own label; a path under a ``groups`` prefix is that group's
    label (``{"/admin/": "/admin"}``); anything else is ``other``."""
    prefixes = tuple((groups or {}).items())

    def route_label(path: str) -> str:
        if path in known:
            return path
        return next((label for prefix, label in prefixes if path.startswith(prefix)), "other")

    return route_label


class AccessLogMiddleware:
    """Logs ``request`` to ``rerankd.access`` and counts into ``metrics`` (when given) once the answer is sent.

    Placed inside the request-id layer and outside every layer that can refuse a request, so refusals are
    logged and counted like answers. A request that fails with an unhandled exception counts as 500.
    """

    def __init__(self, app: ASGIApp, *, route_label: RouteLabel, metrics: HttpMetrics | None = None,
                 log_fields: LogFields | None = None, task_label: RouteLabel | None = None) -> None:
        self.app = app
        self.route_label = route_label
        self.task_label = task_label
        self.metrics = metrics
        self.log_fields = log_fields

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        route = self.route_label(scope.get("path", ""))
        task = self.task_label(route) if self.task_label is not None else ""
        started = time.perf_counter()
        response = ResponseStatus(send)
        try:
            await self.app(scope, receive, response.send)
        finally:
            elapsed = time.perf_counter() - started
            status = response.code
            if self.metrics is not None:
                self.metrics.requests_total.labels(route=route, status=str(status), task=task).inc()
                self.metrics.request_duration_seconds.labels(route=route, task=task).observe(elapsed)
            fields = {"request_id": request_id_of(scope), "route": route, "method": scope.get("method"),
                      "status": status, "latency_ms": round(elapsed * 1000, 2)}
            if task:
                fields["task"] = task
            if self.log_fields is not None:
                fields.update(self.log_fields(scope))
            log.info("request", extra=fields)
