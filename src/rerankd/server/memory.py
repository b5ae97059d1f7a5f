"""Giving a large request's memory back: once no scoring request is in flight, freed pages go to the kernel.

Why: the replica's allocator keeps what a request freed (see :func:`rerankd.runtime.free_memory_releaser`),
so one request of 1000 long documents left RSS hundreds of MB above its idle level for good. Releasing
after every request would make the next forward pass fault its pages back in; releasing only when the
server falls idle after a body of at least ``threshold_bytes`` costs a few ms off the event loop, once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable

from rerankd.runtime import release_free_memory

__all__ = ["IdleMemoryReturn"]

log = logging.getLogger(__name__)


class IdleMemoryReturn:
    """Counts scoring requests in flight; when the last ends after a large one, releases free memory."""

    def __init__(self, releaser: Callable[[], None] | None, *, threshold_bytes: int) -> None:
        self.releaser = releaser
        self.threshold_bytes = threshold_bytes
        self.in_flight = 0
        self.releases = 0
        self._large_since_release = False
        self._releasing: asyncio.Task[None] | None = None

    @property
    def release_scheduled(self) -> bool:
        """Whether a release is scheduled or running now."""
        return self._releasing is not None

    @contextlib.asynccontextmanager
    async def tracking(self, body_bytes: int) -> AsyncIterator[None]:
        self.in_flight += 1
        self._large_since_release |= body_bytes >= self.threshold_bytes
        try:
            yield
        finally:
            self.in_flight -= 1
            if self.in_flight == 0 and self._large_since_release and self._releasing is None:
                self._large_since_release = False
                self._releasing = asyncio.get_running_loop().create_task(self._release())

    async def _release(self) -> None:
        try:
            await asyncio.sleep(0)  # the answer is sent and the request's objects are gone first
            seconds = await asyncio.to_thread(release_free_memory, self.releaser)
            self.releases += 1
            log.debug("released free memory after a large request in %.0f ms", seconds * 1000)
        finally:
            self._releasing = None
