"""The two things every pure-ASGI layer of the room needs: a request header, and a look at the response start.

Pure ASGI (not Starlette's ``BaseHTTPMiddleware``) so bodies stream through untouched and a client's
disconnect reaches the handler.
"""

from __future__ import annotations

from collections.abc import Callable

from starlette.types import Message, Scope, Send

__all__ = ["header_value", "on_response_start"]


def header_value(scope: Scope, name: bytes) -> str | None:
    """The first value of request header ``name`` (lower-case bytes, as ASGI gives them), or None."""
    for key, value in scope.get("headers", ()):
        if key == name:
            return value.decode("latin-1")
    return None


def on_response_start(send: Send, edit: Callable[[Message], None]) -> Send:
    """``send``, with ``edit`` applied to the ``http.response.start`` message (status, headers) on its way."""

    async def edited_send(message: Message) -> None:
        if message["type"] == "http.response.start":
            edit(message)
        await send(message)

    return edited_send
