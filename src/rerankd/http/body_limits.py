"""How much body a request may send, and how long it may stall while sending it.

A declared ``Content-Length`` over the cap is refused before a byte is read; a body streamed without one
is counted as it arrives and cut off at the cap. Two clocks bound the time a body may take (slowloris):
``timeout`` is the longest silence between two reads, ``deadline`` (when given) the total time from the
request's headers to its last body byte, so a byte trickled just inside each silence does not hold a
connection forever either. Both answer 408 and close the connection. The wait for a disconnect that
handlers do once the whole body is in is not timed.
"""

from __future__ import annotations

import asyncio
import time

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from rerankd.http.asgi import header_value, on_response_start
from rerankd.http.errors import error_response

__all__ = ["BodyLimitMiddleware"]


class BodyTooLargeError(HTTPException):
    """An HTTPException so FastAPI's body parser re-raises it (it turns other errors into 400), and the
    app's error handler answers it like any other error."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body exceeds the limit of {limit} bytes")


class BodyTooSlowError(HTTPException):
    """The client stopped sending its body, or sends it too slowly: free the connection (``Connection:
    close``, or uvicorn would keep reading the trickle after the answer)."""

    def __init__(self, message: str) -> None:
        super().__init__(408, message, headers={"Connection": "close"})


class BodyLimitMiddleware:
    """413 for a body over ``max_bytes`` (declared or streamed), 408 for one that stalls ``timeout`` s or
    is not complete ``deadline`` s after the request came in."""

    def __init__(self, app: ASGIApp, *, max_bytes: int, timeout: float, deadline: float | None = None) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.timeout = timeout
        self.deadline = deadline

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = header_value(scope, b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            refusal = error_response(413, f"request body of {length} bytes exceeds the limit of {self.max_bytes} bytes")
            await refusal(scope, receive, send)
            return
        started = False

        def mark_started(_: Message) -> None:
            nonlocal started
            started = True

        try:
            await self.app(scope, self._limited(receive), on_response_start(send, mark_started))
        except (BodyTooLargeError, BodyTooSlowError) as exc:
            # Only an app without an HTTPException handler lets these escape (FastAPI apps answer them
            # through install_error_handlers); once its answer has begun, there is nothing left to say.
            if started:
                raise
            await error_response(exc.status_code, exc.detail, headers=exc.headers)(scope, receive, send)

    def _limited(self, receive: Receive) -> Receive:
        seen = 0
        body_done = False
        ends_at = time.monotonic() + self.deadline if self.deadline is not None else None

        async def limited_receive() -> Message:
            nonlocal seen, body_done
            if body_done:
                return await receive()
            wait, late = self.timeout, f"request body not received within {self.timeout:g} s of silence"
            if ends_at is not None and ends_at - time.monotonic() < wait:
                wait, late = max(0.0, ends_at - time.monotonic()), (
                    f"request body not complete within {self.deadline:g} s (see --body-deadline)")
            try:
                message = await asyncio.wait_for(receive(), wait)
            except asyncio.TimeoutError:
                raise BodyTooSlowError(late) from None
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise BodyTooLargeError(self.max_bytes)
                body_done = not message.get("more_body", False)
            else:
                body_done = True
            return message

        return limited_receive
