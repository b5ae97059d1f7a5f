"""What operators and orchestrators poll: liveness, readiness, a summary, Prometheus metrics.

Why ``/metrics`` has its own credential (``--metrics-token``) rather than an API key or the admin key:
a scraper is neither a tenant nor an administrator, and its token sits in a Prometheus config; leaking it
must not let anyone score or revoke keys. Without the token, ``/metrics`` stays open (DESIGN.md) and
names no tenant (see :mod:`rerankd.observability.gateway_metrics`).
"""

from __future__ import annotations

import hmac
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from rerankd import __version__
from rerankd.gateway.dependencies import Components
from rerankd.http.errors import error_response
from rerankd.observability.gateway_metrics import GatewayMetrics

__all__ = ["add_probes"]


def add_probes(app: FastAPI, metrics: GatewayMetrics) -> None:
    """``/health``, ``/ready``, ``/info`` and ``/metrics`` (``metrics`` is scraped as it is: no refresh step).

    Declared on the app itself, not an included router: deployment checks (tests/integration/
    test_deploy_manifests.py) find the probe paths among the app's own routes.
    """

    @app.get("/health", summary="200 while the process lives")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/ready", summary="200 when at least one replica (of any pool) can take a request, else 503")
    async def ready(components: Components) -> JSONResponse:
        pools = components.pools
        upstreams, healthy = pools.upstreams, pools.available_count()
        if not healthy:
            return error_response(503, f"no replica is available (0 of {len(upstreams)} healthy)", retry_after=2,
                                  error_type="not_ready")
        return JSONResponse({"ready": True, "healthy_replicas": healthy, "replicas": len(upstreams)})

    @app.get("/info", summary="Version, models (pools, aliases, tasks, replicas), limits")
    async def info(components: Components) -> dict[str, Any]:
        settings, pools = components.settings, components.pools
        return {"version": __version__, "role": "gateway", "replicas": len(pools.upstreams),
                "healthy_replicas": pools.available_count(), "models": pools.describe(),
                "default_models": {task: pool.name or None for task, pool in pools.table.defaults.items()},
                "strict_model_names": pools.table.strict,
                "max_documents": settings.max_documents, "max_body_bytes": settings.max_body_bytes,
                "split_threshold": settings.split_threshold, "shared_limits": settings.redis_url is not None,
                "jwt": settings.jwt_enabled}

    # ``async`` on purpose: the state collector reads the components on the event loop, their only thread.
    @app.get("/metrics", summary="Prometheus metrics", response_class=PlainTextResponse)
    async def prometheus_metrics(request: Request, components: Components) -> Response:
        token = components.settings.metrics_token
        if token is not None and not _holds(request.headers.get("authorization"), token):
            return error_response(401, "GET /metrics needs `Authorization: Bearer <token>` with the gateway's "
                                       "--metrics-token")
        return Response(metrics.exposition(with_keys=token is not None), media_type=CONTENT_TYPE_LATEST)


def _holds(authorization: str | None, token: str) -> bool:
    """Whether the header is ``Bearer <token>`` (constant time: the comparison leaks no prefix)."""
    scheme, _, given = (authorization or "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.strip().encode())
