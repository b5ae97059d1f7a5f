"""Load drivers against a stub rerank server: request counts, schedules and error accounting."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

import pytest
from fastapi import FastAPI
from fastapi.responses import JSONResponse

from rerankd.benchmark.loadgen import Traffic, fixed_rate_schedule, poisson_schedule, run_closed_loop, run_open_loop
from rerankd.benchmark.workload import Request, Workload, parse_length_spec
from support import free_port, serving_in_thread

WORKLOAD = Workload(2, parse_length_spec("8"), 0, [Request("q", ["a", "b"], [8, 8]), Request("r", ["c", "d"], [8, 8])])


@pytest.fixture
def stub() -> Iterator[tuple[str, list[dict]]]:
    """A rerank endpoint that records bodies, answers 200 with usage, and 503 for the query "fail"."""
    seen: list[dict] = []
    app = FastAPI()

    @app.post("/v1/rerank")
    async def rerank(body: dict) -> JSONResponse:
        seen.append(body)
        await asyncio.sleep(0.02)
        if body["query"] == "fail":
            return JSONResponse({"error": "busy"}, status_code=503)
        return JSONResponse({"results": [], "usage": {"prompt_tokens": 100, "total_tokens": 100}})

    with serving_in_thread(app, what="stub rerank server") as url:
        yield url, seen


async def test_closed_loop_stops_at_max_requests_even_with_a_long_duration(stub: tuple[str, list[dict]]) -> None:
    url, seen = stub
    result = await run_closed_loop(url, WORKLOAD, concurrency=2, duration_s=600, max_requests=3)
    assert len(result.samples) == len(seen) == 3
    assert all(s.ok and s.tokens == 100 and s.pairs == 2 for s in result.samples)
    assert {b["query"] for b in seen} == {"q", "r"}  # clients cycle through the workload's requests
    assert result.wall_s < 5


async def test_closed_loop_runs_for_its_duration(stub: tuple[str, list[dict]]) -> None:
    url, _ = stub
    result = await run_closed_loop(url, WORKLOAD, concurrency=1, duration_s=0.3)
    assert 3 <= len(result.samples) <= 20 and result.wall_s >= 0.3


async def test_open_loop_sends_on_schedule_and_counts_errors(stub: tuple[str, list[dict]]) -> None:
    url, seen = stub
    failing = Workload(2, WORKLOAD.lengths, 0, [Request("fail", ["x", "y"], [8, 8])])
    result = await run_open_loop(url, failing, qps=40, duration_s=0.5, seed=3)
    schedule = poisson_schedule(40, 0.5, seed=3)
    assert len(result.samples) == len(seen) == len(schedule)
    assert sorted(s.scheduled_s for s in result.samples) == pytest.approx(schedule)
    assert result.errors == {"503": len(schedule)}
    assert result.target_qps == 40 and result.wall_s >= 0.5


def test_fixed_rate_schedule_is_evenly_spaced() -> None:
    assert fixed_rate_schedule(4, 1.0) == [0.0, 0.25, 0.5, 0.75]
    with pytest.raises(ValueError, match="qps"):
        fixed_rate_schedule(0, 1.0)


async def test_open_loop_with_per_request_bodies_a_schedule_and_a_timed_action(stub: tuple[str, list[dict]]) -> None:
    url, seen = stub
    acted = threading.Event()
    traffic = Traffic("numbered", 0, lambda i: {"query": f"q{i}", "documents": ["x"] * (i % 3 + 1)})
    result = await run_open_loop(url, traffic, qps=20, duration_s=0.5, schedule=fixed_rate_schedule(20, 0.5),
                                 actions=[(0.2, "flip", acted.set)])
    assert sorted(b["query"] for b in seen) == sorted(f"q{i}" for i in range(10))
    assert [s.scheduled_s for s in result.samples] == pytest.approx([i / 20 for i in range(10)])
    assert [s.pairs for s in result.samples] == [i % 3 + 1 for i in range(10)]
    assert all(s.ok and s.answered for s in result.samples) and result.workload == "numbered"
    assert acted.is_set() and 0.2 <= result.events["flip"] <= result.events["flip done"] < 5


async def test_a_request_without_an_http_answer_is_not_answered() -> None:
    traffic = Traffic("nowhere", 1, lambda i: {"query": "q", "documents": ["x"]})
    result = await run_open_loop(f"http://127.0.0.1:{free_port()}", traffic, qps=10, duration_s=0.2,
                                 schedule=[0.0], timeout_s=5)
    [sample] = result.samples
    assert sample.status == "ConnectError" and not sample.answered and not sample.ok
