"""Load with faults at set times, and the figures the reliability suite records for each fault.

The load itself is ``rerankd bench``'s open-loop driver (:func:`rerankd.benchmark.loadgen.run_open_loop`) at a
fixed rate: open loop (arrivals do not wait for answers) because that is how real clients behave during an
incident, so a stalled replica shows up as latency and errors, not as a politely slower request rate.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from rerankd.benchmark.loadgen import LoadResult, TimedAction, Traffic, fixed_rate_schedule, run_open_loop

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"


def _small_body(i: int) -> dict[str, Any]:
    return {"query": f"query {i}", "documents": ["alpha", "beta gamma", "delta epsilon zeta"]}


def run_load(url: str, key: str, *, rate: float, duration: float, actions: Sequence[TimedAction] = (),
             body: Callable[[int], dict[str, Any]] = _small_body, timeout: float = 30.0) -> LoadResult:
    """Send ``rate`` requests/s for ``duration`` s to ``url``'s /v1/rerank, running each ``(at, name, action)``."""
    traffic = Traffic("reliability", 0, body)
    return asyncio.run(run_open_loop(url, traffic, qps=rate, duration_s=duration, api_key=key, timeout_s=timeout,
                                     schedule=fixed_rate_schedule(rate, duration), actions=actions))


def p99_between(result: LoadResult, start: float, end: float) -> float:
    """p99 latency (s) of the answered requests scheduled in ``[start, end)``; NaN when there are none."""
    window = sorted(s.latency_s for s in result.samples if start <= s.scheduled_s < end and s.answered)
    if not window:
        return float("nan")
    return window[min(len(window) - 1, math.ceil(0.99 * len(window)) - 1)]


def recovery_seconds(result: LoadResult, fault_at: float, baseline_p99: float) -> float:
    """Time from the fault until the last request that failed or was slower than 3× the baseline p99."""
    slow = [s.scheduled_s + s.latency_s for s in result.samples if s.scheduled_s >= fault_at
            and (not s.ok or s.latency_s > 3 * baseline_p99)]
    return max(slow) - fault_at if slow else 0.0


def fault_figures(result: LoadResult, fault_at: float) -> dict[str, Any]:
    """Requests, answers, client errors, statuses, p99 before and during the fault, and recovery time."""
    baseline = p99_between(result, 0.0, fault_at)
    statuses: dict[str, int] = {}
    for s in result.samples:
        key = str(s.status) if s.answered else f"no answer ({s.status})"
        statuses[key] = statuses.get(key, 0) + 1
    return {"requests": len(result.samples), "answered": sum(1 for s in result.samples if s.answered),
            "client_errors": sum(1 for s in result.samples if not s.ok), "statuses": statuses,
            "p99_before_ms": round(baseline * 1000, 1),
            "p99_fault_ms": round(p99_between(result, fault_at, fault_at + 5.0) * 1000, 1),
            "recovery_s": round(recovery_seconds(result, fault_at, baseline), 2), "events": result.events}


def record(case: str, figures: dict[str, Any], name: str = "reliability.json") -> None:
    """Merge one case's figures into ``test-artifacts/<name>`` (what the README's table is built from)."""
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / name
    data = json.loads(path.read_text()) if path.exists() else {}
    data[case] = {**figures, "recorded_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    path.write_text(json.dumps(data, indent=2) + "\n")
