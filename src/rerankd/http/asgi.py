"""What the pure-ASGI layers of the room share: a request header, a look at the response start, its status.

Pure ASGI (not Starlette's ``BaseHTTPMiddleware``) so bodies stream through untouched and a client's
disconnect reaches the handler.
"""

from __future__ import annotations

from collections.abc import Callable

from starlette.types import Message, Scope, Send

__all__ = ["ResponseStatus", "header_value", "on_response_start"]


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


class ResponseStatus:
    """The status a response starts with, as the layers that report it (access log, tracing) read it.

    ``code`` is 500 until the app starts a response: an app that raises before answering is answered 500 by
    the server's error layer, and the log line and span must say so. Pass :attr:`send` on to the app.
    """

    def __init__(self, send: Send) -> None:
        self.code = 500
        self.send = on_response_start(send, self._note)

    def _note(self, message: Message) -> None:
        self.code = message["status"]
