"""What every HTTP app of rerankd shares (server, gateway, alert relay): request ids, body caps, security
headers, the access log, the one error body, and dropping work whose client hung up.

The connection-level limits (head size and time, idle keep-alive, trusted proxies) are a uvicorn protocol
(:mod:`rerankd.http.protocol`), set up by :func:`rerankd.http.serving.uvicorn_config`; neither is imported
here, so importing the room does not import uvicorn.

The room knows nothing of reranking or of the gateway's keys: apps plug their own concepts in through hooks
(``route_label``, ``access_log_fields``, ``public_paths`` of :class:`HttpMiddleware`).
"""

from rerankd.http.access_log import HttpMetrics, LogFields, RouteLabel, known_routes_label
from rerankd.http.api_key import bearer_token, same_secret
from rerankd.http.disconnect import CLIENT_CLOSED_STATUS, ClientDisconnectedError, unless_disconnected
from rerankd.http.errors import ERROR_RESPONSES, error_body, error_headers, error_response, install_error_handlers
from rerankd.http.headers import parse_retry_after
from rerankd.http.middleware import HttpMiddleware
from rerankd.http.request_id import request_id_of

__all__ = [
    "CLIENT_CLOSED_STATUS",
    "ERROR_RESPONSES",
    "ClientDisconnectedError",
    "HttpMetrics",
    "HttpMiddleware",
    "LogFields",
    "RouteLabel",
    "bearer_token",
    "error_body",
    "error_headers",
    "error_response",
    "install_error_handlers",
    "known_routes_label",
    "parse_retry_after",
    "request_id_of",
    "same_secret",
    "unless_disconnected",
]
