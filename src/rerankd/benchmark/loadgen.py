"""Load drivers against any rerank URL (a server or the gateway): closed loop and open loop.

* Closed loop: ``concurrency`` clients, each sending its next request when the last one answered.
  Measures the throughput the service sustains when it is the bottleneck.
* Open loop: requests leave at Poisson arrival times for a fixed rate, whether or not earlier ones
  answered. Latency is measured from each request's *scheduled* time, so a stalled server cannot hide
  its queueing by slowing the client down (no coordinated omission).

Both record every request's latency, status and billed tokens; :mod:`rerankd.benchmark.report` turns
that into percentiles, rates and tables. The open loop can also leave at a fixed rate
(:func:`fixed_rate_schedule`) and run actions at set times during the load (kill a replica, stop Redis),
recording when each ran: the reliability tests measure faults under load with it.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx

from rerankd.benchmark.workload import Workload

__all__ = [
    "LoadResult",
    "RssSampler",
    "Sample",
    "TimedAction",
    "Traffic",
    "fixed_rate_schedule",
    "poisson_schedule",
    "run_closed_loop",
    "run_open_loop",
]

TimedAction = tuple[float, str, Callable[[], object]]
"""``(at_s, name, action)``: run ``action()`` (in a thread) ``at_s`` seconds into an open-loop run."""


@dataclass(frozen=True)
class Sample:
    """One request: when it was due, how long it took, how it ended."""

    scheduled_s: float
    latency_s: float
    status: int | str
    pairs: int
    tokens: int

    @property
    def ok(self) -> bool:
        return self.status == 200

    @property
    def answered(self) -> bool:
        """An HTTP answer came (any status); False for a timeout or a connection that failed."""
        return isinstance(self.status, int)


@dataclass
class LoadResult:
    """Every request of one load phase plus the phase's wall time."""

    mode: str
    workload: str
    n_docs: int
    wall_s: float
    samples: list[Sample] = field(default_factory=list)
    concurrency: int | None = None
    target_qps: float | None = None
    peak_rss_bytes: int | None = None
    events: dict[str, float] = field(default_factory=dict)  # timed action name (and "<name> done") -> s from start

    @property
    def errors(self) -> dict[str, int]:
        return dict(Counter(str(s.status) for s in self.samples if not s.ok))


@dataclass(frozen=True)
class Traffic:
    """What a load driver sends: the body of its ``i``-th request, and the name and size the report shows."""

    name: str
    n_docs: int
    body: Callable[[int], dict[str, Any]]

    @classmethod
    def of(cls, workload: Workload, model: str | None = None) -> Traffic:
        """Cycle through ``workload``'s requests."""
        bodies = [r.body(model) for r in workload.requests]
        return cls(workload.name, workload.n_docs, lambda i: bodies[i % len(bodies)])


def _traffic(workload: Workload | Traffic, model: str | None) -> Traffic:
    return workload if isinstance(workload, Traffic) else Traffic.of(workload, model)


def fixed_rate_schedule(qps: float, duration_s: float) -> list[float]:
    """Send times (seconds from start) exactly ``1/qps`` apart over ``duration_s``: the same load every run."""
    if qps <= 0:
        raise ValueError("qps must be positive")
    return [i / qps for i in range(int(qps * duration_s))]


def poisson_schedule(qps: float, duration_s: float, seed: int = 0) -> list[float]:
    """Send times (seconds from start) of a Poisson process at ``qps`` over ``duration_s``."""
    if qps <= 0:
        raise ValueError("qps must be positive")
    rng = random.Random(seed)
    times: list[float] = []
    t = rng.expovariate(qps)
    while t < duration_s:
        times.append(t)
        t += rng.expovariate(qps)
    return times


class RssSampler:
    """Peak resident memory of a process (by pid), sampled in a thread; psutil optional.

    Why sampling: the server is another process, so ``getrusage`` cannot see it. The kernel's own
    high-water mark (``VmHWM``) catches peaks between samples, but it counts from process start; it is
    used only when it could be reset for this phase (``/proc/PID/clear_refs``, same user or root).
    """

    def __init__(self, pid: int | None, interval_s: float = 0.1) -> None:
        self.pid = pid
        self.interval_s = interval_s
        self.peak: int | None = None
        self._hwm_reset = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> RssSampler:
        if self.pid is None:
            return self
        try:
            with open(f"/proc/{self.pid}/clear_refs", "w") as f:
                f.write("5")  # resets VmHWM to the current RSS
            self._hwm_reset = True
        except OSError:
            self._hwm_reset = False
        try:
            import psutil
        except ImportError:  # pragma: no cover - psutil is in the bench and dev extras
            return self
        proc = psutil.Process(self.pid)

        def loop() -> None:
            while not self._stop.is_set():
                try:
                    rss = proc.memory_info().rss
                except psutil.Error:
                    return
                self.peak = max(self.peak or 0, rss)
                self._stop.wait(self.interval_s)

        self._thread = threading.Thread(target=loop, name="rss-sampler", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)
        hwm = _vm_hwm(self.pid) if self.pid is not None and self._hwm_reset else None
        if hwm is not None:
            self.peak = max(self.peak or 0, hwm)


def _vm_hwm(pid: int) -> int | None:
    """The kernel's peak RSS of ``pid`` since it started (Linux), in bytes."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _client(base_url: str, api_key: str | None, timeout_s: float, connections: int) -> httpx.AsyncClient:
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    return httpx.AsyncClient(base_url=base_url, headers=headers, timeout=timeout_s, limits=limits)


async def _send(client: httpx.AsyncClient, path: str, body: dict[str, Any], scheduled: float,
                started: float) -> Sample:
    """POST one request; ``scheduled`` is when it was due (open loop) or sent (closed loop)."""
    n_docs = len(body.get("documents") or ())
    try:
        resp = await client.post(path, json=body)
        status: int | str = resp.status_code
        tokens = 0
        if status == 200:
            usage = resp.json().get("usage") or {}
            tokens = int(usage.get("total_tokens") or usage.get("prompt_tokens") or 0)
    except httpx.TimeoutException:
        status, tokens = "timeout", 0
    except httpx.HTTPError as exc:
        status, tokens = type(exc).__name__, 0
    done = time.perf_counter()
    return Sample(scheduled - started, done - scheduled, status, n_docs, tokens)


async def run_closed_loop(base_url: str, workload: Workload | Traffic, *, concurrency: int, duration_s: float,
                          max_requests: int | None = None, api_key: str | None = None, path: str = "/v1/rerank",
                          model: str | None = None, timeout_s: float = 600.0) -> LoadResult:
    """``concurrency`` clients send back to back until ``duration_s`` passed or ``max_requests`` were sent.

    Requests in flight at the deadline are waited for and counted; the wall time ends at the last answer.
    """
    traffic = _traffic(workload, model)
    samples: list[Sample] = []
    sent = 0
    async with _client(base_url, api_key, timeout_s, concurrency) as client:
        started = time.perf_counter()
        deadline = started + duration_s

        async def worker(w: int) -> None:
            nonlocal sent
            i = w
            while time.perf_counter() < deadline and (max_requests is None or sent < max_requests):
                sent += 1
                t = time.perf_counter()
                samples.append(await _send(client, path, traffic.body(i), t, started))
                i += concurrency

        await asyncio.gather(*(worker(w) for w in range(concurrency)))
        wall = time.perf_counter() - started
    return LoadResult("closed", traffic.name, traffic.n_docs, wall, samples, concurrency=concurrency)


async def run_open_loop(base_url: str, workload: Workload | Traffic, *, qps: float, duration_s: float,
                        seed: int = 0, api_key: str | None = None, path: str = "/v1/rerank", model: str | None = None,
                        timeout_s: float = 600.0, max_in_flight: int = 1024, schedule: Sequence[float] | None = None,
                        actions: Sequence[TimedAction] = ()) -> LoadResult:
    """Send at Poisson times for ``qps`` during ``duration_s`` (or at the times in ``schedule``); latency
    counts from the scheduled time. Each of ``actions`` runs in a thread at its time, and the run waits for
    it; when it started and ended are in ``LoadResult.events``.

    Past ``max_in_flight`` unanswered requests a due request is not sent and counts as ``client_overflow``
    (the service is far past saturation; sending more only measures the client).
    """
    traffic = _traffic(workload, model)
    send_times = poisson_schedule(qps, duration_s, seed) if schedule is None else schedule
    samples: list[Sample] = []
    events: dict[str, float] = {}
    in_flight = 0
    async with _client(base_url, api_key, timeout_s, max_in_flight) as client:
        started = time.perf_counter()

        async def fire(i: int, due: float) -> None:
            nonlocal in_flight
            in_flight += 1
            try:
                samples.append(await _send(client, path, traffic.body(i), due, started))
            finally:
                in_flight -= 1

        async def act(at_s: float, name: str, action: Callable[[], object]) -> None:
            await asyncio.sleep(max(0.0, started + at_s - time.perf_counter()))
            events[name] = round(time.perf_counter() - started, 3)
            await asyncio.to_thread(action)
            events[f"{name} done"] = round(time.perf_counter() - started, 3)

        tasks: list[asyncio.Task[None]] = [asyncio.create_task(act(*action)) for action in actions]
        for i, offset in enumerate(send_times):
            due = started + offset
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            if in_flight >= max_in_flight:
                samples.append(Sample(offset, 0.0, "client_overflow", len(traffic.body(i).get("documents") or ()), 0))
                continue
            tasks.append(asyncio.create_task(fire(i, due)))
        if tasks:
            await asyncio.gather(*tasks)
        wall = max(duration_s, time.perf_counter() - started)
    samples.sort(key=lambda s: s.scheduled_s)
    return LoadResult("open", traffic.name, traffic.n_docs, wall, samples, target_qps=qps, events=events)
