"""A real HTTP proxy in front of a real replica that can be told to fail: the "replica answers 500s" fault."""

from __future__ import annotations

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from support import ServerThread


class FlakyProxy:
    """A real HTTP server in front of a replica that answers 500 while ``failing`` is set."""

    def __init__(self, target: str) -> None:
        self.target = target
        self.failing = False
        self.hits = 0

        async def forward(request: Request) -> Response:
            self.hits += 1
            if self.failing and request.url.path != "/ready":
                return JSONResponse({"error": {"message": "injected failure"}}, status_code=500)
            async with httpx.AsyncClient() as client:
                upstream = await client.request(request.method, self.target + request.url.path,
                                                content=await request.body(),
                                                headers={"content-type": "application/json"})
            return Response(upstream.content, upstream.status_code, media_type="application/json")

        app = Starlette(routes=[Route("/{path:path}", forward, methods=["GET", "POST"])])
        self._server = ServerThread(app, what="flaky proxy")
        self.port, self.url = self._server.port, self._server.url

    def __enter__(self) -> FlakyProxy:
        self._server.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.stop()
