"""One shared API key (the server's ``--api-key``): ``Authorization: Bearer <key>`` on every non-public path.

The gateway has its own, richer auth (many keys, JWT, admin rights) inside the app; this layer is for a
process with one secret, checked before a byte of the body is read.
"""

from __future__ import annotations

import hmac

from starlette.types import ASGIApp, Receive, Scope, Send

from rerankd.http.asgi import header_value
from rerankd.http.errors import error_response

__all__ = ["ApiKeyMiddleware", "bearer_token", "same_secret"]


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header (any case of ``Bearer``), or None."""
    scheme, _, token = (authorization or "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token else None


def same_secret(given: str, expected: str) -> bool:
    """Compare in constant time, so response timing does not reveal how much of a guess was right."""
    return hmac.compare_digest(given.encode(), expected.encode())


class ApiKeyMiddleware:
    """401 (with ``WWW-Authenticate: Bearer``) unless the request carries ``api_key`` or its path is public."""

    def __init__(self, app: ASGIApp, *, api_key: str, public_paths: frozenset[str] = frozenset()) -> None:
        self.app = app
        self.api_key = api_key
        self.public_paths = public_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("path") in self.public_paths:
            await self.app(scope, receive, send)
            return
        token = bearer_token(header_value(scope, b"authorization"))
        if token is None:
            await error_response(401, "missing API key: send `Authorization: Bearer <key>`")(scope, receive, send)
        elif not same_secret(token, self.api_key):
            await error_response(401, "invalid API key")(scope, receive, send)
        else:
            await self.app(scope, receive, send)
