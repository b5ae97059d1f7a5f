"""Stopping work whose client has gone away (server: pairs never computed; gateway: upstream call dropped)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any, TypeVar

from starlette.requests import Request

__all__ = ["CLIENT_CLOSED_STATUS", "ClientDisconnectedError", "unless_disconnected"]

CLIENT_CLOSED_STATUS = 499  # nginx's code for "client went away": logged and counted, never seen by anyone


class ClientDisconnectedError(Exception):
    """The client hung up before its answer was ready; the work was cancelled.

    An ordinary exception, not ``CancelledError``: the app's handler turns it into a 499 for the access log
    and metrics. A ``CancelledError`` escaping the app made uvicorn log "Exception in ASGI application"
    with a traceback at error level for every load generator that stopped mid-request.
    """

T = TypeVar("T")


async def _until_disconnected(request: Request) -> None:
    """Return when the client closes the connection (the body has been read already)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


def _discard_outcome(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


async def unless_disconnected(request: Request, work: Awaitable[T]) -> T:
    """Run ``work``; cancel it if the client goes away first, so no one computes an unwanted answer."""
    job = asyncio.ensure_future(work)
    watch = asyncio.ensure_future(_until_disconnected(request))
    try:
        await asyncio.wait({job, watch}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watch.cancel()
    if not job.done():
        job.cancel()
        # Retrieve whatever the cancelled work ends with, so asyncio does not log "exception was never
        # retrieved" for it later; the client is gone, nobody else wants it.
        job.add_done_callback(_discard_outcome)
        raise ClientDisconnectedError("client disconnected")
    return job.result()
