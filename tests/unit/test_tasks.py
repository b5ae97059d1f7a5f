"""gather_or_cancel: results in order, and no job left running once one fails."""

from __future__ import annotations

import asyncio

import pytest

from rerankd.tasks import gather_or_cancel


async def _value(v: int) -> int:
    await asyncio.sleep(0)
    return v


def test_results_come_back_in_job_order() -> None:
    assert asyncio.run(gather_or_cancel([_value(3), _value(1), _value(2)])) == [3, 1, 2]


def test_a_failing_job_cancels_the_others_before_the_error_moves_on() -> None:
    async def scenario() -> bool:
        started = asyncio.Event()
        never = asyncio.Event()
        cancelled = False

        async def waits() -> int:
            nonlocal cancelled
            started.set()
            try:
                await never.wait()
            except asyncio.CancelledError:
                cancelled = True
                raise
            return 0

        async def fails() -> int:
            await started.wait()
            raise RuntimeError("boom")

        with pytest.raises(RuntimeError, match="boom"):
            await gather_or_cancel([waits(), fails()])
        return cancelled  # read right after the raise: the waiter must already have been cancelled and awaited

    assert asyncio.run(scenario())
