"""At most N requests in flight per process; the rest get a 503 with ``Retry-After`` at once.

Why in ASGI and not uvicorn's ``limit_concurrency``: uvicorn counts open connections as well as tasks, so
a crowd of idle keep-alive connections would refuse every new request, probes included, and its 503 is
plain text. Here only requests count, the answer is the one JSON error body, and the probes
(``/health``, ``/ready``, ``/metrics``) are never refused, so an orchestrator still sees an overloaded
process as alive. Connections themselves are bounded in time by the edge protocol's timeouts.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

from rerankd.http.errors import error_response

__all__ = ["PROBE_PATHS", "ConcurrencyLimitMiddleware"]

PROBE_PATHS = frozenset({"/health", "/ready", "/metrics"})


class ConcurrencyLimitMiddleware:
    """503 for a request arriving while ``limit`` others are in flight (probes exempt, and not counted)."""

    def __init__(self, app: ASGIApp, *, limit: int) -> None:
        self.app = app
        self.limit = limit
        self.in_flight = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("path") in PROBE_PATHS:
            await self.app(scope, receive, send)
            return
        if self.in_flight >= self.limit:
            refusal = error_response(503, f"{self.limit} requests are in flight, the most this process takes "
                                          "(see --max-concurrent-requests); retry shortly",
                                     error_type="overloaded", retry_after=1)
            await refusal(scope, receive, send)
            return
        self.in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_flight -= 1
