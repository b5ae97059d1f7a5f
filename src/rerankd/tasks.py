"""Awaiting a group of jobs so that none outlives the call: the one helper every fan-out here shares.

Why not bare ``asyncio.gather``: when one job raises (or the caller is cancelled), ``gather`` returns at
once and leaves the others running unobserved, still sending requests and writing results. The gateway's
split parts, the eval rerank stage and the embedding client's batches all need the rest cancelled and
awaited before the error moves on.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Iterable
from typing import TypeVar

__all__ = ["gather_or_cancel"]

_T = TypeVar("_T")


async def gather_or_cancel(jobs: Iterable[Awaitable[_T]]) -> list[_T]:
    """Await all jobs (started together, results in their order); if one raises, cancel the rest first."""
    tasks = [asyncio.ensure_future(job) for job in jobs]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise
