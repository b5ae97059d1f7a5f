"""The gateway HTTP app: the server's rerank API in front of a fleet of replicas.

A client cannot tell the gateway from a server except that it needs a key and does not go down: the
scoring routes take the same bodies (validated with the same models) and return the replicas' answers.
Lifecycle: the database is migrated and health checks start before the socket accepts traffic; on
SIGTERM uvicorn stops accepting, lets in-flight requests finish (``--drain-seconds``), then the ledger is
flushed and connections closed.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy.exc import SQLAlchemyError
from starlette.types import Scope

from rerankd import __version__
from rerankd.gateway.admin import admin_router
from rerankd.gateway.proxy import ScoringProxy, scoring_router
from rerankd.gateway.settings import GatewaySettings
from rerankd.gateway.state import GatewayState, open_gateway_state
from rerankd.http import HttpMiddleware, known_routes_label, request_id_of
from rerankd.http.errors import ERROR_RESPONSES, error_response, install_error_handlers
from rerankd.observability.gateway_metrics import GatewayMetrics
from rerankd.runtime import freeze_startup_heap

__all__ = ["create_gateway_app"]

log = logging.getLogger(__name__)

GATEWAY_ROUTES = frozenset({
    "/v1/rerank", "/v2/rerank", "/rerank", "/v1/score", "/score", "/v1/models", "/v1/usage", "/health",
    "/ready", "/metrics", "/info", "/docs", "/openapi.json", "/redoc",
})


def _caller_log_fields(scope: Scope) -> dict[str, str]:
    """The caller's key name (set by auth), never the key, on each access-log line."""
    name = scope.get("state", {}).get("key_name")
    return {"key": name} if name else {}


def create_gateway_app(settings: GatewaySettings) -> FastAPI:
    """Build the gateway for ``settings`` (its parts connect in the app's lifespan)."""
    settings.check_runnable()
    metrics = GatewayMetrics()
    metrics.build_info.info({"version": __version__})
    holder: dict[str, GatewayState] = {}

    def state_of() -> GatewayState:
        return holder["state"]

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        state = await open_gateway_state(settings, metrics)
        holder["state"] = state
        freeze_startup_heap()
        healthy = state.pool.available_count()
        log.info("gateway ready: %d/%d replicas healthy", healthy, len(state.pool.upstreams))
        try:
            yield
        finally:
            await state.close()
            log.info("gateway stopped; usage ledger flushed")

    app = FastAPI(title="rerankd gateway", version=__version__, lifespan=lifespan, responses=ERROR_RESPONSES,
                  redirect_slashes=False,
                  description="One entry point in front of rerankd replicas: the same rerank API, with keys, "
                              "limits, failover and a usage ledger.")
    install_error_handlers(app)

    @app.exception_handler(SQLAlchemyError)
    @app.exception_handler(OSError)
    async def _database_down(request: Request, exc: Exception) -> JSONResponse:
        # Scoring keeps working through a database outage (cached keys, buffered ledger); only the routes
        # that must read the database now (admin, usage) answer 503 until it is back.
        log.warning("database unavailable for %s: %s", request.url.path, type(exc).__name__)
        return error_response(503, "the gateway database is unavailable; retry shortly", retry_after=5,
                              error_type="database_unavailable")
    app.add_middleware(HttpMiddleware, route_label=known_routes_label(GATEWAY_ROUTES, {"/admin/": "/admin"}),
                       metrics=metrics, access_log_fields=_caller_log_fields,
                       max_body_bytes=settings.max_body_bytes, body_timeout=settings.body_timeout,
                       body_deadline=settings.body_deadline,
                       max_concurrent_requests=settings.max_concurrent_requests)
    proxy = ScoringProxy(state_of)
    app.include_router(scoring_router(proxy, state_of))
    app.include_router(admin_router(proxy, state_of))

    @app.get("/v1/models", summary="Models the replicas serve (OpenAI list)")
    async def models(request: Request) -> Response:
        await proxy.identify(request)
        reply = await state_of().forwarder.send("/v1/models", b"", request_id_of(request.scope), method="GET")
        return Response(reply.body, status_code=reply.status, media_type="application/json")

    @app.get("/health", summary="200 while the process lives")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/ready", summary="200 when at least one replica can take a request, else 503")
    async def ready() -> JSONResponse:
        pool = state_of().pool
        upstreams, healthy = pool.upstreams, pool.available_count()
        if not healthy:
            return error_response(503, f"no replica is available (0 of {len(upstreams)} healthy)", retry_after=2,
                                  error_type="not_ready")
        return JSONResponse({"ready": True, "healthy_replicas": healthy, "replicas": len(upstreams)})

    @app.get("/info", summary="Version, replicas, limits")
    async def info() -> dict[str, Any]:
        state = state_of()
        return {"version": __version__, "role": "gateway", "replicas": len(state.pool.upstreams),
                "healthy_replicas": state.pool.available_count(),
                "max_documents": settings.max_documents, "max_body_bytes": settings.max_body_bytes,
                "split_threshold": settings.split_threshold, "shared_limits": settings.redis_url is not None,
                "jwt": settings.jwt_enabled}

    @app.get("/metrics", summary="Prometheus metrics", response_class=PlainTextResponse)
    async def prometheus_metrics() -> Response:
        state_of().refresh_metrics()
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app
