"""Admission before work on the gateway: who asks first, then the body's size, before pydantic sees it.

Why: validating a body is not free. 200k empty ``{}`` documents (0.6 MB) made pydantic build 200k errors on
the event loop for 4.4 s, stalling every client, to answer 422 — unbilled and uncounted. The scoring
routes therefore parse the body with :mod:`rerankd.admission`'s bounded parser (the server's, shared), and
only a body inside every bound reaches validation.

Why authenticate before parsing: a stranger gets 401 and learns nothing about the limits (not a 413). Why
charge a refusal: every request the gateway looks at costs it work, so one refused for its size or shape
(admission's 400/413/422, or pydantic's 422 after it) spends one of the key's requests/min and gets its
usage row, like any other refusal (:meth:`~rerankd.gateway.pipeline.ScoringPipeline.refuse`). A TEI body on
``/rerank`` gets its errors in TEI's shape, as from a server (:func:`rerankd.protocol.error_dialect_of`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute

from rerankd.admission import admit
from rerankd.errors import RerankdError
from rerankd.gateway.dependencies import caller_of, components_of
from rerankd.http.errors import set_error_dialect
from rerankd.http.middleware import request_id_of
from rerankd.protocol import error_dialect_of

__all__ = ["GatewayAdmissionRoute", "ledger_route"]


def ledger_route(path: str) -> str:
    """The route a scoring path is recorded (and forwarded) as: ``/score`` is ``/v1/score``."""
    return "/v1/score" if path == "/score" else path


def _validation_status(exc: RequestValidationError) -> int:
    """The status the error handlers answer for ``exc``: 400 for a body that is not JSON, else 422."""
    return 400 if any(error.get("type") == "json_invalid" for error in exc.errors()) else 422


class GatewayAdmissionRoute(APIRoute):
    """A scoring route: authenticate, admit the body (bounded), then FastAPI's validation and the handler;
    a refusal for size or shape is charged to the caller's key before it is answered."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handle = super().get_route_handler()

        async def admitted_handler(request: Request) -> Response:
            started = time.perf_counter()
            components = components_of(request)
            identity = await caller_of(request, components)  # a stranger's 401 comes before any parsing

            async def charged(status: int) -> None:
                await components.pipeline.refuse(
                    identity, route=ledger_route(request.url.path), request_id=request_id_of(request.scope),
                    request_id_given=request.scope["state"].get("request_id_given", False), status=status,
                    started=started)

            path = request.url.path
            try:
                admitted = await admit(request, components.admission)
            except RerankdError as exc:
                set_error_dialect(request.scope, error_dialect_of(path, getattr(request, "_body", b"")))
                await charged(exc.status_code)
                raise
            except RequestValidationError as exc:
                set_error_dialect(request.scope, error_dialect_of(path, getattr(request, "_body", b"")))
                await charged(_validation_status(exc))
                raise
            # Every later error of this request (validation, limits, a replica's) in the shape its client reads.
            set_error_dialect(request.scope, error_dialect_of(path, admitted.admitted_json))
            try:
                return await handle(admitted)
            except RequestValidationError as exc:  # pydantic's; the pipeline records its own refusals
                await charged(_validation_status(exc))
                raise

        return admitted_handler
