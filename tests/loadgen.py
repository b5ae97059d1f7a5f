"""An open-loop load generator for the reliability suite: requests at a fixed rate, faults at set times.

Open loop (arrivals do not wait for answers) because that is how real clients behave during an incident:
a stalled replica must show up as latency and errors, not as a politely slower request rate.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"


@dataclass
class Sample:
    started: float  # seconds since the run began
    latency: float  # seconds
    status: int | None  # None: no HTTP answer at all
    error: str = ""


@dataclass
class Run:
    samples: list[Sample] = field(default_factory=list)
    events: dict[str, float] = field(default_factory=dict)  # name -> time since start

    @property
    def answered(self) -> int:
        return sum(1 for s in self.samples if s.status is not None)

    def failures(self) -> list[Sample]:
        return [s for s in self.samples if s.status != 200]

    def p99_between(self, start: float, end: float) -> float:
        window = sorted(s.latency for s in self.samples if start <= s.started < end and s.status is not None)
        if not window:
            return float("nan")
        return window[min(len(window) - 1, math.ceil(0.99 * len(window)) - 1)]

    def recovery_seconds(self, fault_at: float, baseline_p99: float) -> float:
        """Time from the fault until the last request that failed or was slower than 3× the baseline p99."""
        slow = [s.started + s.latency for s in self.samples if s.started >= fault_at
                and (s.status != 200 or s.latency > 3 * baseline_p99)]
        return max(slow) - fault_at if slow else 0.0

    def summary(self, fault_at: float) -> dict[str, Any]:
        baseline = self.p99_between(0.0, fault_at)
        statuses: dict[str, int] = {}
        for s in self.samples:
            key = str(s.status) if s.status is not None else f"no answer ({s.error})"
            statuses[key] = statuses.get(key, 0) + 1
        return {"requests": len(self.samples), "answered": self.answered, "client_errors": len(self.failures()),
                "statuses": statuses, "p99_before_ms": round(baseline * 1000, 1),
                "p99_fault_ms": round(self.p99_between(fault_at, fault_at + 5.0) * 1000, 1),
                "recovery_s": round(self.recovery_seconds(fault_at, baseline), 2), "events": self.events}


async def _run(url: str, key: str, rate: float, duration: float, actions: list[tuple[float, str, Callable[[], Any]]],
               body: Callable[[int], dict[str, Any]], timeout: float) -> Run:
    run = Run()
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    limits = httpx.Limits(max_connections=200, max_keepalive_connections=50)
    async with httpx.AsyncClient(timeout=timeout, limits=limits, headers={"Authorization": f"Bearer {key}"}) as client:
        async def one(i: int, at: float) -> None:
            started = loop.time()
            try:
                response = await client.post(f"{url}/v1/rerank", json=body(i))
                run.samples.append(Sample(at, loop.time() - started, response.status_code))
            except httpx.HTTPError as exc:
                run.samples.append(Sample(at, loop.time() - started, None, type(exc).__name__))

        async def act(at: float, name: str, action: Callable[[], Any]) -> None:
            await asyncio.sleep(max(0.0, t0 + at - loop.time()))
            run.events[name] = round(loop.time() - t0, 3)
            await asyncio.to_thread(action)
            run.events[name + " done"] = round(loop.time() - t0, 3)

        tasks = [asyncio.create_task(act(at, name, fn)) for at, name, fn in actions]
        total = int(rate * duration)
        for i in range(total):
            at = i / rate
            await asyncio.sleep(max(0.0, t0 + at - loop.time()))
            tasks.append(asyncio.create_task(one(i, at)))
        await asyncio.gather(*tasks)
    run.samples.sort(key=lambda s: s.started)
    return run


def run_load(url: str, key: str, *, rate: float, duration: float,
             actions: list[tuple[float, str, Callable[[], Any]]] = (),  # type: ignore[assignment]
             body: Callable[[int], dict[str, Any]] | None = None, timeout: float = 30.0) -> Run:
    """Send ``rate`` requests/s for ``duration`` s, running each ``(at, name, action)`` at its time."""
    def default_body(i: int) -> dict[str, Any]:
        return {"query": f"query {i}", "documents": ["alpha", "beta gamma", "delta epsilon zeta"]}
    return asyncio.run(_run(url, key, rate, duration, list(actions), body or default_body, timeout))


def record(case: str, figures: dict[str, Any], name: str = "reliability.json") -> None:
    """Merge one case's figures into ``test-artifacts/<name>`` (what the README's table is built from)."""
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / name
    data = json.loads(path.read_text()) if path.exists() else {}
    data[case] = {**figures, "recorded_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    path.write_text(json.dumps(data, indent=2) + "\n")
