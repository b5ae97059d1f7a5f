"""The server's admission route: :mod:`rerankd.admission`'s bounded parse, with idle-memory tracking.

Why a separate module: parsing and sizing a body is shared with the gateway (:mod:`rerankd.admission`);
counting each request in flight so a large one's memory goes back afterwards is the server's alone.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.routing import APIRoute

from rerankd.admission import AdmissionLimits, AdmittedRequest, admit, check_texts, parse_bounded
from rerankd.http.errors import ErrorDialect, set_error_dialect
from rerankd.server.memory import IdleMemoryReturn

__all__ = ["AdmissionLimits", "AdmittedRequest", "DialectOf", "admission_route", "check_texts", "parse_bounded"]

DialectOf = Callable[[str, Any], ErrorDialect]
"""Which error dialect a request to ``path`` speaks, from its parsed body (or its raw bytes, when admission
refused the body before it was parsed)."""


def admission_route(limits: AdmissionLimits, memory: IdleMemoryReturn | None = None, *,
                    dialect_of: DialectOf | None = None) -> type[APIRoute]:
    """A route class whose handler admits the body (:func:`admit`) before FastAPI parses and validates it;
    with ``memory``, every request is counted in flight so memory goes back once a large one is done; with
    ``dialect_of``, every error of the request (admission's own refusals included) is answered in the dialect
    of the body it sent (TEI's error shape for a TEI body)."""

    class AdmissionRoute(APIRoute):
        def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
            handle = super().get_route_handler()
            path = self.path

            async def admitted(request: Request) -> AdmittedRequest:
                if dialect_of is None:
                    return await admit(request, limits)
                try:
                    admitted = await admit(request, limits)
                except Exception:
                    set_error_dialect(request.scope, dialect_of(path, getattr(request, "_body", b"")))
                    raise
                set_error_dialect(request.scope, dialect_of(path, admitted.admitted_json))
                return admitted

            async def admitted_handler(request: Request) -> Response:
                if memory is None:
                    return await handle(await admitted(request))
                async with memory.tracking(int(request.headers.get("content-length") or 0)):
                    return await handle(await admitted(request))

            return admitted_handler

    return AdmissionRoute
