"""Every request body of rerankd's APIs is JSON, whatever the client labels it."""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

__all__ = ["JsonBodyMiddleware"]


class JsonBodyMiddleware:
    """Sets ``Content-Type: application/json`` on every POST, so a body mislabelled as form data (``curl -d``)
    gets a JSON parse result naming what is wrong, not a confusing type error."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope.get("method") == "POST":
            headers = [(k, v) for k, v in scope.get("headers", ()) if k != b"content-type"]
            headers.append((b"content-type", b"application/json"))
            scope["headers"] = headers
        await self.app(scope, receive, send)
