"""Every request gets an id: the client's ``X-Request-ID`` when it is safe to log and echo, else a fresh one.

The id is in the response's ``X-Request-ID``, the access log line, the rerank response's ``id`` and the
gateway's ledger, so one id follows a request through every process and log.
"""

from __future__ import annotations

import re
import uuid

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from rerankd.http.asgi import header_value, on_response_start

__all__ = ["RequestIdMiddleware", "request_id_of"]

# Printable, no spaces or quotes, bounded: safe in a header, a log line and a database column.
_SAFE_ID = re.compile(r"^[A-Za-z0-9._:/+=-]{1,128}$")


def request_id_of(scope: Scope) -> str:
    """The id :class:`RequestIdMiddleware` gave this request ("" outside it)."""
    return scope.get("state", {}).get("request_id", "")


class RequestIdMiddleware:
    """Sets ``scope["state"]["request_id"]`` (and ``request_id_given``: whether the client chose it)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = header_value(scope, b"x-request-id")
        request_id = given if given and _SAFE_ID.match(given) else uuid.uuid4().hex
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        state["request_id_given"] = request_id == given
        header = (b"x-request-id", request_id.encode())

        def add_id(message: Message) -> None:
            message["headers"] = [*message.get("headers", ()), header]

        await self.app(scope, receive, on_response_start(send, add_id))
