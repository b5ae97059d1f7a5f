"""ASGI middleware of the inference server: request ids, body size cap, API key, access metrics.

Pure ASGI (not ``BaseHTTPMiddleware``) so bodies stream through untouched and a disconnect reaches
the handler.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import re
import time
import uuid
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, Protocol

from prometheus_client import Counter, Histogram
from starlette.exceptions import HTTPException

__all__ = ["HttpMetrics", "ServerMiddleware", "request_id_of"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

log = logging.getLogger("rerankd.access")
_SAFE_ID = re.compile(r"^[A-Za-z0-9._:/+=-]{1,128}$")
PUBLIC_PATHS = frozenset({"/health", "/ready", "/metrics"})
_KNOWN_ROUTES = frozenset({
    "/v1/rerank", "/v2/rerank", "/rerank", "/v1/score", "/score", "/v1/models", "/health", "/ready",
    "/metrics", "/info", "/docs", "/openapi.json", "/redoc",
})


class HttpMetrics(Protocol):
    """What the middleware counts into: both ``ServerMetrics`` and ``GatewayMetrics`` have these."""

    requests_total: Counter
    request_duration_seconds: Histogram


def request_id_of(scope: Scope) -> str:
    return scope.get("state", {}).get("request_id", "")


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return value.decode("latin-1")
    return None


def _treat_body_as_json(scope: Scope) -> None:
    """Every POST body here is JSON: parse it as such even when the client (say ``curl -d``) labels it
    form data, so a mislabelled body gets a JSON parse result, not a confusing type error."""
    headers = [(k, v) for k, v in scope.get("headers", ()) if k != b"content-type"]
    headers.append((b"content-type", b"application/json"))
    scope["headers"] = headers


class _BodyTooLarge(HTTPException):
    """An HTTPException so FastAPI's body parser re-raises it (it turns other errors into 400)."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body exceeds the limit of {limit} bytes")


class _BodyTooSlow(HTTPException):
    """The client stopped sending its body (slowloris): free the connection instead of waiting forever."""

    def __init__(self, timeout: float) -> None:
        super().__init__(408, f"request body not received within {timeout:g} s of silence")


# Every answer is JSON for programs: no sniffing, no framing, no caching, no referrer; no active content at all
# except on the interactive docs pages, which load Swagger/ReDoc assets.
_SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cache-control", b"no-store"),
]
_CSP = (b"content-security-policy", b"default-src 'none'; frame-ancestors 'none'")
_DOCS_PATHS = frozenset({"/docs", "/redoc", "/docs/oauth2-redirect"})


class ServerMiddleware:
    """Gives every response an ``X-Request-ID``, caps body size, checks the API key, counts requests."""

    def __init__(
        self, app: ASGIApp, *, metrics: HttpMetrics, max_body_bytes: int, api_key: str | None,
        known_routes: frozenset[str] = _KNOWN_ROUTES, body_timeout: float = 30.0,
    ) -> None:
        """``known_routes`` become the ``route`` label as they are; other paths are counted as ``other``
        (``/admin/...`` as ``/admin``), so a scan of random URLs cannot blow up the label set."""
        self.app = app
        self.metrics = metrics
        self.max_body_bytes = max_body_bytes
        self.api_key = api_key
        self.known_routes = known_routes
        self.body_timeout = body_timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = _header(scope, b"x-request-id")
        request_id = given if given and _SAFE_ID.match(given) else uuid.uuid4().hex
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        state["request_id_given"] = request_id == given
        if scope.get("method") == "POST":
            _treat_body_as_json(scope)
        path = scope.get("path", "")
        route = path if path in self.known_routes else "/admin" if path.startswith("/admin/") else "other"
        started = time.perf_counter()
        status_holder = {"status": 500}

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                status_holder["status"] = message["status"]
                headers = list(message.get("headers", []))
                headers.append((b"x-request-id", request_id.encode()))
                present = {k.lower() for k, _ in headers}
                headers.extend(h for h in _SECURITY_HEADERS if h[0] not in present)
                if path not in _DOCS_PATHS:
                    headers.append(_CSP)
                message["headers"] = headers
            await send(message)

        try:
            rejection = self._reject(scope)
            if rejection is not None:
                await self._send_error(send_with_id, *rejection)
                return
            await self.app(scope, self._capped(receive), send_with_id)
        except _BodyTooLarge:
            await self._send_error(send_with_id, 413, f"request body exceeds {self.max_body_bytes} bytes")
        except _BodyTooSlow as exc:
            await self._send_error(send_with_id, 408, str(exc.detail))
        finally:
            status = status_holder["status"]
            elapsed = time.perf_counter() - started
            self.metrics.requests_total.labels(route=route, status=str(status)).inc()
            self.metrics.request_duration_seconds.labels(route=route).observe(elapsed)
            fields = {"request_id": request_id, "route": route, "method": scope.get("method"),
                      "status": status, "latency_ms": round(elapsed * 1000, 2)}
            key_name = scope["state"].get("key_name")  # set by the gateway's auth: the key's name, never the key
            if key_name:
                fields["key"] = key_name
            log.info("request", extra=fields)

    def _reject(self, scope: Scope) -> tuple[int, str] | None:
        length = _header(scope, b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_body_bytes:
            return 413, f"request body of {length} bytes exceeds the limit of {self.max_body_bytes} bytes"
        if self.api_key and scope.get("path") not in PUBLIC_PATHS:
            auth = _header(scope, b"authorization") or ""
            scheme, _, token = auth.partition(" ")
            if scheme.lower() != "bearer" or not token:
                return 401, "missing API key: send `Authorization: Bearer <key>`"
            if not hmac.compare_digest(token.strip().encode(), self.api_key.encode()):
                return 401, "invalid API key"
        return None

    def _capped(self, receive: Receive) -> Receive:
        """Count body bytes against the cap, and time out a body that stalls (not the wait for a disconnect
        that handlers do once the whole body is in)."""
        seen = 0
        body_done = False

        async def capped_receive() -> Message:
            nonlocal seen, body_done
            if body_done:
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), self.body_timeout)
            except asyncio.TimeoutError:
                raise _BodyTooSlow(self.body_timeout) from None
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_body_bytes:
                    raise _BodyTooLarge(self.max_body_bytes)
                body_done = not message.get("more_body", False)
            else:
                body_done = True
            return message

        return capped_receive

    @staticmethod
    async def _send_error(send: Send, status: int, message: str) -> None:
        kind = {401: "unauthorized", 408: "request_timeout", 413: "payload_too_large"}.get(status, "error")
        body = json.dumps({"error": {"message": message, "type": kind, "code": status}}).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        if status == 401:
            headers.append((b"www-authenticate", b"Bearer"))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
