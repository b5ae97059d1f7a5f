"""Headers that keep a browser from doing anything clever with an answer meant for programs.

Every answer is JSON for programs: no sniffing, no framing, no caching, no referrer, and no active content
at all except on the interactive docs pages, which load Swagger/ReDoc assets. No CORS headers are ever
added, so browsers keep cross-origin pages out.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from rerankd.http.asgi import on_response_start

__all__ = ["DOCS_PATHS", "SecurityHeadersMiddleware"]

_SECURITY_HEADERS = (
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cache-control", b"no-store"),
)
_CSP = (b"content-security-policy", b"default-src 'none'; frame-ancestors 'none'")
DOCS_PATHS = frozenset({"/docs", "/redoc", "/docs/oauth2-redirect"})  # FastAPI's pages: they need scripts


class SecurityHeadersMiddleware:
    """Adds the headers above to every response that does not set them itself; the CSP everywhere but the docs."""

    def __init__(self, app: ASGIApp, *, docs_paths: frozenset[str] = DOCS_PATHS) -> None:
        self.app = app
        self.docs_paths = docs_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        csp = () if scope.get("path", "") in self.docs_paths else (_CSP,)

        def add_headers(message: Message) -> None:
            headers = list(message.get("headers", ()))
            present = {key.lower() for key, _ in headers}
            headers.extend(h for h in _SECURITY_HEADERS if h[0] not in present)
            headers.extend(csp)
            message["headers"] = headers

        await self.app(scope, receive, on_response_start(send, add_headers))
