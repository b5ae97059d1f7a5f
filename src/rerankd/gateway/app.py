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
from fastapi.responses import JSONResponse
from sqlalchemy.exc import SQLAlchemyError
from starlette.types import Scope

from rerankd import __version__
from rerankd.gateway.admin import admin_router
from rerankd.gateway.components import open_components
from rerankd.gateway.dependencies import COMPONENTS_STATE
from rerankd.gateway.embed_routes import embedding_router
from rerankd.gateway.probes import add_probes
from rerankd.gateway.routes import scoring_router
from rerankd.gateway.settings import GatewaySettings
from rerankd.http import HttpMiddleware, known_routes_label
from rerankd.http.errors import ERROR_RESPONSES, error_response, install_error_handlers
from rerankd.observability.gateway_metrics import GatewayMetrics
from rerankd.observability.tasks import task_of_route
from rerankd.protocol import ErrorBody
from rerankd.runtime import freeze_startup_heap

__all__ = ["create_gateway_app"]

log = logging.getLogger(__name__)

GATEWAY_ROUTES = frozenset({
    "/v1/rerank", "/v2/rerank", "/rerank", "/v1/score", "/score", "/v1/models", "/v1/usage", "/health",
    "/ready", "/metrics", "/info", "/docs", "/openapi.json", "/redoc", "/v1/embeddings", "/embed", "/v2/embed",
    "/v1/embed",
})


def _caller_log_fields(scope: Scope) -> dict[str, str]:
    """The caller's key name (set by auth), never the key, on each access-log line."""
    name = scope.get("state", {}).get("key_name")
    return {"key": name} if name else {}


# The gateway's own error statuses besides the server's (OpenAPI).
_GATEWAY_ERRORS: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorBody, "description": "Unknown route, model, or API key (`/admin/keys/{name_or_id}`)"},
    502: {"model": ErrorBody, "description": "A replica's answer was malformed (e.g. an implausible token count)"},
}


def create_gateway_app(settings: GatewaySettings) -> FastAPI:
    """Build the gateway for ``settings`` (its components connect in the app's lifespan)."""
    settings.check_runnable()
    metrics = GatewayMetrics()
    metrics.build_info.info({"version": __version__})

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[dict[str, Any]]:
        components = await open_components(settings, metrics)
        freeze_startup_heap()
        healthy = components.pools.available_count()
        log.info("gateway ready: %d/%d replicas healthy in %d pool(s)", healthy, len(components.pools.upstreams),
                 len(components.pools.pools))
        try:
            yield {COMPONENTS_STATE: components}  # every request's ``request.state`` (see dependencies.py)
        finally:
            await components.close()
            summary = components.ledger.summary()
            # "usage ledger flushed" only when every row reached the database (ledger.summary's contract).
            log.log(logging.ERROR if summary.startswith("usage ledger NOT") else logging.INFO,
                    "gateway stopped; %s", summary)

    app = FastAPI(title="rerankd gateway", version=__version__, lifespan=lifespan, redirect_slashes=False,
                  responses={**ERROR_RESPONSES, **_GATEWAY_ERRORS},
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
    app.add_middleware(HttpMiddleware, route_label=known_routes_label(GATEWAY_ROUTES, {"/admin/": "/admin",
                                                                                     "/v1/models/": "/v1/models/{id}"}),
                       metrics=metrics, access_log_fields=_caller_log_fields, task_label=task_of_route,
                       max_body_bytes=settings.max_body_bytes, body_timeout=settings.body_timeout,
                       body_deadline=settings.body_deadline, max_concurrent_requests=settings.max_concurrent_requests)
    app.include_router(scoring_router())
    app.include_router(embedding_router())
    app.include_router(admin_router())
    add_probes(app, metrics)
    return app
