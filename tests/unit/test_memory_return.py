"""IdleMemoryReturn: free memory goes back to the kernel once, when the server falls idle after a large request."""

from __future__ import annotations

import asyncio
import time

from rerankd.runtime import free_memory_releaser, release_free_memory
from rerankd.server.memory import IdleMemoryReturn


async def released(memory: IdleMemoryReturn, count: int) -> None:
    deadline = time.monotonic() + 10
    while memory.releases < count:
        assert time.monotonic() < deadline, "the release never ran"
        await asyncio.sleep(0.001)


async def test_release_waits_for_the_last_request_in_flight_after_a_large_one() -> None:
    calls: list[int] = []
    memory = IdleMemoryReturn(lambda: calls.append(1), threshold_bytes=1000)
    async with memory.tracking(10):
        async with memory.tracking(5000):  # large, but another request is still in flight
            pass
        assert not memory.release_scheduled
    assert memory.release_scheduled  # scheduled as the last request ends, before anything else runs
    await released(memory, 1)
    assert calls == [1] and not memory.release_scheduled
    async with memory.tracking(10):  # small requests alone never release
        pass
    assert not memory.release_scheduled and calls == [1]


def test_the_loaded_allocator_has_a_release_and_it_runs() -> None:
    releaser = free_memory_releaser()  # glibc under pytest: malloc_trim; tcmalloc under `rerankd serve`
    assert releaser is not None
    assert release_free_memory(releaser) >= 0
