"""The one uvicorn configuration every rerankd HTTP process runs under (server, gateway, alert relay).

Why one helper: the connection-level limits (head size and count, head and idle timeouts, whose proxy
headers are believed) are uvicorn settings and a protocol class, not middleware; built here, every app
gets them the same way and none can forget one.
"""

from __future__ import annotations

import contextlib
import sys
from typing import Any

import uvicorn

from rerankd.edge_settings import EdgeSettings
from rerankd.http.protocol import edge_protocol

__all__ = ["EXIT_NO_SOCKET", "run_until_stopped", "uvicorn_config"]

EXIT_NO_SOCKET = 3  # uvicorn's own "startup failed" status


def uvicorn_config(app: Any, *, host: str, port: int, limits: EdgeSettings, log_level: str = "info",
                   **options: Any) -> uvicorn.Config:
    """uvicorn's ``Config`` for ``app`` with ``limits`` enforced; ``options`` are passed on (shutdown
    grace, access log).

    Proxy headers are honoured only from ``limits.forwarded_allow_ips``: uvicorn's own default believes
    ``X-Forwarded-For`` from 127.0.0.1, so any local process could name the client address the gateway's
    audit records. WebSockets are off: no rerankd route speaks them.
    """
    return uvicorn.Config(
        app, host=host, port=port, log_config=None, log_level=log_level,
        http=edge_protocol(limits), ws="none",
        timeout_keep_alive=limits.idle_timeout,  # type: ignore[arg-type]  # a float works: it is call_later's
        proxy_headers=bool(limits.forwarded_allow_ips), forwarded_allow_ips=limits.forwarded_allow_ips,
        **options,
    )


def run_until_stopped(config: uvicorn.Config) -> None:
    """Serve until a signal stops it (Ctrl-C included), like ``uvicorn.run``; exit with status 3 when the
    socket could not be opened."""
    server = uvicorn.Server(config)
    with contextlib.suppress(KeyboardInterrupt):  # uvicorn re-raises the SIGINT it drained for
        server.run()
    if not server.started:
        sys.exit(EXIT_NO_SOCKET)
