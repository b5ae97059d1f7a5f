"""``rerankd alert-relay``: an Alertmanager webhook receiver that forwards to DingTalk and WeCom robots.

Alertmanager's webhook posts its own JSON; the robots want theirs (markdown messages) and DingTalk a
signed URL. This small HTTP service does the translation:

    POST /alerts            every configured robot
    POST /alerts/dingtalk   the DingTalk robot only
    POST /alerts/wecom      the WeCom robot only
    GET  /health, GET /metrics

One webhook per robot in alertmanager.yml is the recommended set-up: Alertmanager then retries each
robot on its own. The answer is 200 only when every targeted robot accepted the message, else 502 so
Alertmanager retries later (it retries on 5xx, not on 4xx).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import click
import httpx
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, generate_latest

from rerankd.edge_settings import EdgeSettings
from rerankd.http import HttpMiddleware, bearer_token, install_error_handlers, known_routes_label, same_secret
from rerankd.observability.alert_delivery import DeliveryError, Robot, RobotSender, redact_url
from rerankd.observability.alert_format import Notification, dingtalk_message, wecom_message
from rerankd.options import env_option

__all__ = ["RelaySettings", "alert_relay", "create_relay_app"]

log = logging.getLogger("rerankd.alert_relay")

_RENDER = {"dingtalk": dingtalk_message, "wecom": wecom_message}
_ROUTES = frozenset({"/alerts", "/alerts/dingtalk", "/alerts/wecom", "/health", "/metrics"})


@dataclass(frozen=True)
class RelaySettings:
    """Everything the relay needs, built once from flags and environment."""

    robots: tuple[Robot, ...]
    auth_token: str | None = None
    timeout: float = 10.0
    attempts: int = 3
    backoff: float = 0.5
    max_body_bytes: int = 16 * 1024 * 1024  # Alertmanager sends every alert of a group in one body
    body_timeout: float = 30.0
    edge: EdgeSettings = field(default_factory=lambda: EdgeSettings())  # head size and time, idle, body deadline
    max_concurrent_requests: int = 64  # Alertmanager sends a handful at a time

    def __repr__(self) -> str:
        return (f"RelaySettings(robots={self.robots!r}, auth={'on' if self.auth_token else 'off'}, "
                f"timeout={self.timeout}, attempts={self.attempts}, max_body_bytes={self.max_body_bytes})")


def create_relay_app(settings: RelaySettings) -> FastAPI:
    """The relay's ASGI app. One shared HTTP client, opened and closed with the app's lifespan."""
    if not settings.robots:
        raise ValueError("no robot configured: give --dingtalk-url and/or --wecom-url")
    registry = CollectorRegistry()
    deliveries = Counter(
        "rerankd_alert_relay_deliveries_total", "Notifications forwarded to robots, by robot and outcome.",
        ["robot", "outcome"], registry=registry,
    )
    for robot in settings.robots:  # at 0 from the start, so rate() and the alert on failures see a series
        for outcome in ("delivered", "failed"):
            deliveries.labels(robot=robot.kind, outcome=outcome)
    holder: dict[str, RobotSender] = {}

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        async with httpx.AsyncClient(timeout=settings.timeout, follow_redirects=False) as client:
            holder["sender"] = RobotSender(client, attempts=settings.attempts, backoff=settings.backoff)
            yield

    app = FastAPI(title="rerankd alert relay", lifespan=lifespan, docs_url=None, redoc_url=None,
                  redirect_slashes=False)
    install_error_handlers(app)
    app.add_middleware(HttpMiddleware, route_label=known_routes_label(_ROUTES),
                       max_body_bytes=settings.max_body_bytes, body_timeout=settings.body_timeout,
                       body_deadline=settings.edge.body_deadline,
                       max_concurrent_requests=settings.max_concurrent_requests)
    app.state.registry = registry  # for tests that check the metric names the alert rules use
    app.state.deliveries = deliveries

    def check_auth(request: Request) -> None:
        """A dependency, so a wrong token gets 401 before the body is even validated."""
        if not settings.auth_token:
            return
        token = bearer_token(request.headers.get("authorization"))
        if token is None or not same_secret(token, settings.auth_token):
            raise HTTPException(401, "missing or wrong bearer token (see --auth-token)")

    async def forward(notification: Notification, robots: list[Robot]) -> JSONResponse:
        log.info("notification received", extra={
            "receiver": notification.receiver, "status": notification.status,
            "alerts": len(notification.alerts), "group": notification.group_labels,
        })

        async def deliver(robot: Robot) -> str | None:
            try:
                await holder["sender"].send(robot, _RENDER[robot.kind](notification))
            except DeliveryError as exc:
                deliveries.labels(robot=robot.kind, outcome="failed").inc()
                return str(exc)
            deliveries.labels(robot=robot.kind, outcome="delivered").inc()
            return None

        errors = [e for e in await asyncio.gather(*(deliver(r) for r in robots)) if e]
        if errors:
            return JSONResponse({"delivered": len(robots) - len(errors), "errors": errors}, status_code=502)
        return JSONResponse({"delivered": len(robots), "errors": []})

    @app.post("/alerts", summary="Forward to every configured robot", dependencies=[Depends(check_auth)])
    async def all_robots(notification: Notification) -> JSONResponse:
        return await forward(notification, list(settings.robots))

    @app.post("/alerts/{kind}", summary="Forward to the robot(s) of one kind: dingtalk or wecom",
              dependencies=[Depends(check_auth)])
    async def one_kind(kind: str, notification: Notification) -> JSONResponse:
        robots = [r for r in settings.robots if r.kind == kind]
        if not robots:
            configured = sorted({r.kind for r in settings.robots})
            raise HTTPException(404, f"no {kind!r} robot configured; configured: {', '.join(configured)}")
        return await forward(notification, robots)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "robots": sorted({r.kind for r in settings.robots})}

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return app


@click.command("alert-relay")
@env_option("--host", default="127.0.0.1")
@env_option("--port", type=click.IntRange(0, 65535), default=9095)
@env_option("--dingtalk-url", default=None, show_default=False,
            help="DingTalk robot webhook, https://oapi.dingtalk.com/robot/send?access_token=…")
@env_option("--dingtalk-secret", default=None, show_default=False,
            help="The robot's 'sign' secret (SEC…): requests are then signed with timestamp and HMAC-SHA256.")
@env_option("--wecom-url", default=None, show_default=False,
            help="WeCom group robot webhook, https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key=…")
@env_option("--auth-token", default=None, show_default=False,
            help="Require `Authorization: Bearer TOKEN` from Alertmanager (http_config.authorization).")
@env_option("--timeout", type=click.FloatRange(min=0.1), default=10.0, help="Seconds per robot request.")
@env_option("--attempts", type=click.IntRange(min=1), default=3,
            help="Tries per robot on connection errors, timeouts and 5xx.")
@env_option("--max-body-bytes", type=click.IntRange(min=1024), default=RelaySettings.max_body_bytes,
            help="Largest webhook body accepted (413 past it).")
@env_option("--body-timeout", type=click.FloatRange(min=0.1), default=RelaySettings.body_timeout,
            help="Seconds a client may stall while sending its body before a 408 (slowloris guard).")
@env_option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]), default="info")
@env_option("--log-format", type=click.Choice(["auto", "json", "text"]), default="auto")
@env_option("--log-file", default=None, help="Also write logs to this file, rotated at 50 MB.")
def alert_relay(
    host: str, port: int, dingtalk_url: str | None, dingtalk_secret: str | None, wecom_url: str | None,
    auth_token: str | None, timeout: float, attempts: int, max_body_bytes: int, body_timeout: float,
    log_level: str, log_format: str, log_file: str | None,
) -> None:
    """Forward Alertmanager webhooks to DingTalk and WeCom group robots."""
    from rerankd.http.serving import run_until_stopped, uvicorn_config
    from rerankd.observability.logging import configure_logging

    configure_logging(log_level, log_format, log_file)
    if dingtalk_secret and not dingtalk_url:
        raise click.UsageError("--dingtalk-secret needs --dingtalk-url")
    robots = []
    if dingtalk_url:
        robots.append(Robot("dingtalk", dingtalk_url, dingtalk_secret or None))
    if wecom_url:
        robots.append(Robot("wecom", wecom_url))
    if not robots:
        raise click.UsageError("give at least one robot: --dingtalk-url and/or --wecom-url")
    settings = RelaySettings(robots=tuple(robots), auth_token=auth_token or None, timeout=timeout, attempts=attempts,
                             max_body_bytes=max_body_bytes, body_timeout=body_timeout)
    for robot in robots:
        click.echo(f"alert-relay: {robot.kind} → {redact_url(robot.url)}"
                   + (" (signed)" if robot.secret else ""), err=True)
    click.echo(f"alert-relay: listening on http://{host}:{port}/alerts", err=True)
    run_until_stopped(uvicorn_config(create_relay_app(settings), host=host, port=port, limits=settings.edge,
                                     log_level=log_level))
