"""Headers a request may send only once: ``Host`` and ``Authorization``.

Why refuse instead of picking one: two ``Host`` headers is request smuggling's favourite ambiguity (RFC
9112 requires a 400), and with two ``Authorization`` headers the credential checked and the one a proxy
in front logged may differ. Whoever sends them gets a 400 naming the header.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

from rerankd.http.errors import error_response

__all__ = ["SINGLE_HEADERS", "HeaderRulesMiddleware"]

SINGLE_HEADERS = {b"host": "Host", b"authorization": "Authorization"}


class HeaderRulesMiddleware:
    """400 for a request that repeats a header of :data:`SINGLE_HEADERS`."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            names = [name for name, _ in scope.get("headers", ()) if name in SINGLE_HEADERS]
            repeated = sorted({SINGLE_HEADERS[n] for n in names if names.count(n) > 1})
            if repeated:
                refusal = error_response(400, f"send one {repeated[0]} header; this request has several",
                                         headers={"Connection": "close"})  # what follows may be smuggled
                await refusal(scope, receive, send)
                return
        await self.app(scope, receive, send)
