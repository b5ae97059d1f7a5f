"""A real HTTP proxy in front of a real replica that can be told to fail: the "replica answers 500s" fault."""

from __future__ import annotations

import threading
import time

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from conftest import free_port


class FlakyProxy:
    """A real HTTP server in front of a replica that answers 500 while ``failing`` is set."""

    def __init__(self, target: str) -> None:
        self.target = target
        self.failing = False
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
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
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> FlakyProxy:
        self.thread.start()
        while not self.server.started:
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)
