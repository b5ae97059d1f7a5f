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
from rerankd.server.memory import IdleMemoryReturn

__all__ = ["AdmissionLimits", "AdmittedRequest", "admission_route", "check_texts", "parse_bounded"]


def admission_route(limits: AdmissionLimits, memory: IdleMemoryReturn | None = None) -> type[APIRoute]:
    """A route class whose handler admits the body (:func:`admit`) before FastAPI parses and validates it;
    with ``memory``, every request is counted in flight so memory goes back once a large one is done."""

    class AdmissionRoute(APIRoute):
        def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
            handle = super().get_route_handler()

            async def admitted_handler(request: Request) -> Response:
                if memory is None:
                    return await handle(await admit(request, limits))
                async with memory.tracking(int(request.headers.get("content-length") or 0)):
                    return await handle(await admit(request, limits))

            return admitted_handler

    return AdmissionRoute
