"""A hostile client next to a well-behaved one: the well-behaved client's p99 and its ledger must not suffer.

The well-behaved client sends small reranks (3 documents) at a fixed rate through a real ``rerankd gateway``
(in front of two real replicas of its own), first alone, then while an attacker, in its own
process so it competes for the CPU like a real one and not for this process's GIL, runs every attack
docs/limits.md bounds at once: oversized and too many header lines (431), duplicate ``Authorization``
(400), header and body drips on many connections, validation bombs (200k ``{}`` documents, 413) and giant
in-limit requests (1000 long documents; admitted and scored, the batcher interleaves them fairly). The
header attacks and drips hit a replica directly as well. The attacker authenticates with its own key,
which has a requests-per-minute limit, so what it gets refused spends its own budget.

Which attacker requests have a usage row: every authenticated scoring request the gateway looked at — the
giant ones (200, or 429 once the key's minute is spent) and the validation bombs sent to the gateway (413
from admission, which spends a request of the key's minute, or 429 once it is spent). 431, 400 (duplicate
header) and 408 are refused at the HTTP edge before any route and have none; a replica keeps no ledger.

Figures go to ``test-artifacts/reliability.json`` under "hostile client"; docs/reliability.md quotes them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import multiprocessing
import os
import signal
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from multiprocessing.synchronize import Event
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from reliability.figures import record, run_load
from reliability.test_faults import ADMIN
from rerankd.benchmark.loadgen import LoadResult
from rerankd.engine.bulk import thread_nice
from rerankd.gateway.db import UsageRecord, create_engine_for
from support import Proc, spawn_gateway, spawn_replica, wait_until

pytestmark = pytest.mark.timeout(900)

RATE, DURATION = 8.0, 12.0  # the well-behaved client: requests/s and seconds per phase
ATTACKER_RPM = 20  # the attacker key's budget: giant requests past it are 429s (recorded, never scored)
# What one forward pass may hold: a small request waits for at most the pass under way and rides in the
# next (which takes giant rows only up to an eighth of this budget), so this bounds its latency under giant
# requests. The default (16384) makes a pass on this test's shared CPU take about a second.
MAX_BATCH_TOKENS = 2048
# The replicas' --bulk-nice: the server's default (10), or RERANKD_TEST_BULK_NICE to compare (0 = one lane).
BULK_NICE = os.environ.get("RERANKD_TEST_BULK_NICE", "10")
DRIP_CONNECTIONS = 60  # per kind (header drip, body drip) and per target (gateway, replica)
WARM_UP_REQUESTS = 16
GIANT_P99_BOUND_MS = 4000.0
# The edge attacks' bound on the small client's p99: twice the calm p99, plus a slack for the noise of a p99 of 96
# requests (its second-slowest) on two shared cores. Quiet runs here measured 1.4-2.4x calm (calm p99 32-46 ms),
# so 2x alone failed 2 runs in 5 with nothing wrong; an attack that stalls the event loop (a 64 MB header stalled
# every client 3-4 s before the header caps) is still far past the bound. The ratio is recorded with the figures.
EDGE_SLACK_MS = 50.0
RECORDED = {"giant in-limit request (gateway)", "validation bomb (gateway)"}  # answers with usage rows (see above)
GIANT_DOCUMENT = " ".join(f"word{i % 97}" for i in range(300))

Outcomes = dict[str, int]


# ------------------------------------------------------------------------------ the attacker (own process)


async def _exchange(port: int, data: bytes, timeout: float = 30.0) -> str:
    """Send ``data`` on a fresh connection and read until EOF; the answer's status, or how it ended."""
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), timeout)
    except (OSError, TimeoutError):
        return "connect failed"
    try:
        with contextlib.suppress(OSError):
            writer.write(data)
            await writer.drain()
        head = await asyncio.wait_for(reader.read(64), timeout)
        return head.split(b" ", 2)[1].decode() if head.startswith(b"HTTP/1.1 ") else "closed"
    except (OSError, TimeoutError, IndexError):
        return "closed"
    finally:
        writer.close()


async def _drip(port: int, head: bytes, tail: bytes, stop: Event) -> str:
    """Send ``head`` then ``tail`` one byte every 0.5 s until the server answers or hangs up."""
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return "connect failed"
    try:
        writer.write(head)
        for byte in tail:
            if stop.is_set():
                return "stopped"
            writer.write(bytes([byte]))
            await writer.drain()
            with contextlib.suppress(TimeoutError):
                answer = await asyncio.wait_for(reader.read(64), 0.5)
                return answer.split(b" ", 2)[1].decode() if answer.startswith(b"HTTP/1.1 ") else "closed"
        return "finished"
    except (OSError, IndexError):
        return "closed"
    finally:
        writer.close()


def _attacks(gateway: int, replica: int, key: str) -> dict[str, Callable[[Event], Awaitable[str]]]:
    """Each attack by name: one attempt, returning how it ended (the status, or how the connection ended)."""
    auth = f"Authorization: Bearer {key}\r\n".encode()
    bomb = json.dumps({"query": "q", "documents": [{}] * 200_000}).encode()
    giant = json.dumps({"query": "giant", "documents": [f"{i} {GIANT_DOCUMENT}" for i in range(1000)]}).encode()

    def post(body: bytes) -> bytes:
        return (b"POST /v1/rerank HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n" + auth
                + f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode() + body)

    big_header = b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 65536 + b"\r\n\r\n"
    many_lines = b"GET /health HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-%d: y\r\n" % i for i in range(200)) + b"\r\n"
    duplicate = b"GET /v1/models HTTP/1.1\r\nHost: x\r\n" + auth + auth + b"Connection: close\r\n\r\n"
    drip_head = b"POST /v1/rerank HTTP/1.1\r\nHost: x\r\n" + auth + b"Content-Type: application/json\r\n"
    drip_body_head = drip_head + b"Content-Length: 100000\r\n\r\n"
    attacks: dict[str, Callable[[Event], Awaitable[str]]] = {}
    for target, port in (("gateway", gateway), ("replica", replica)):
        attacks[f"64 KiB header ({target})"] = lambda _s, p=port: _exchange(p, big_header)
        attacks[f"200 header lines ({target})"] = lambda _s, p=port: _exchange(p, many_lines)
        attacks[f"validation bomb ({target})"] = lambda _s, p=port: _exchange(p, post(bomb))
        for i in range(DRIP_CONNECTIONS):
            attacks[f"header drip ({target}) #{i}"] = lambda s, p=port: _drip(p, b"", drip_head * 100, s)
            attacks[f"body drip ({target}) #{i}"] = lambda s, p=port: _drip(p, drip_body_head, b"{" * 100000, s)
    attacks["duplicate Authorization (gateway)"] = lambda _s: _exchange(gateway, duplicate)
    attacks["giant in-limit request (gateway)"] = lambda _s: _exchange(gateway, post(giant), timeout=120)
    return attacks


async def _attack(gateway: int, replica: int, key: str, giant: bool, stop: Event, started: Any) -> Outcomes:
    """Run the edge attacks (or, with ``giant``, the giant requests) in a loop until ``stop``; count outcomes
    per attack kind (drips folded together)."""
    outcomes: Counter[str] = Counter()
    attacks = {n: a for n, a in _attacks(gateway, replica, key).items() if ("giant" in n) == giant}
    pending = set(attacks)

    def under_way(name: str) -> None:
        pending.discard(name)
        if not pending:
            started.set()

    async def loop(name: str, attempt: Callable[[Event], Awaitable[str]]) -> None:
        kind = name.split(" #")[0]
        while not stop.is_set():
            if "drip" in kind or "giant" in kind:  # long by design: under way once begun
                under_way(name)
            outcome = await attempt(stop)
            outcomes[f"{kind}: {'still open at the end' if outcome == 'stopped' else outcome}"] += 1
            under_way(name)
            await asyncio.sleep(0.05)  # pacing, so one attacker process does not spin on a refused connect

    await asyncio.gather(*(loop(name, attempt) for name, attempt in attacks.items()))
    return dict(outcomes)


def _attacker_main(gateway: int, replica: int, key: str, giant: bool, stop: Event, started: Any,
                   results: Any) -> None:
    results.put(asyncio.run(_attack(gateway, replica, key, giant, stop, started)))


def attacked_phase(gateway: Proc, replica: Proc, key: str, good_key: str, *,
                   giant: bool) -> tuple[LoadResult, Outcomes]:
    """The well-behaved client's load while an attacker process (started first, until every attack is under
    way) runs the edge attacks or the giant requests; its load and the attack outcomes."""
    context = multiprocessing.get_context("fork")
    stop, started, results = context.Event(), context.Event(), context.Queue()
    attacker = context.Process(target=_attacker_main, daemon=True,
                               args=(gateway.port, replica.port, key, giant, stop, started, results))
    attacker.start()
    try:
        wait_until(started.is_set, 60, "every attack to be under way")
        load = run_load(gateway.url, good_key, rate=RATE, duration=DURATION)
        stop.set()
        outcomes: Outcomes = results.get(timeout=150)
        attacker.join(30)
        return load, outcomes
    finally:
        stop.set()
        if attacker.is_alive():
            attacker.kill()


# ------------------------------------------------------------------------------ the test


@pytest.fixture(scope="module")
def replicas(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Proc]]:
    """Two replicas of their own (not the session fleet) with a forward pass bounded to MAX_BATCH_TOKENS."""
    log_dir = tmp_path_factory.mktemp("hostile-replicas")
    procs = [spawn_replica(tiny_model_dir, log_dir, "--max-batch-tokens", str(MAX_BATCH_TOKENS), "--bulk-nice",
                           BULK_NICE) for _ in range(2)]
    try:
        for proc in procs:
            proc.wait_ready(600)  # a loaded machine (replicas trace their compiled forward): a deadline, not a sleep
        yield procs
    finally:
        for proc in procs:
            proc.stop(signal.SIGKILL)


def low_priority_threads(proc: Proc) -> int:
    """Threads of ``proc`` running below the usual priority (nice > 0): where its bulk work runs."""
    assert proc.popen is not None
    count = 0
    for task in Path(f"/proc/{proc.popen.pid}/task").iterdir():
        with contextlib.suppress(ProcessLookupError):  # a thread may end while it is read
            count += thread_nice(int(task.name)) > 0
    return count


def percentile(result: LoadResult, q: float) -> float:
    latencies = sorted(s.latency_s for s in result.samples if s.ok)
    return latencies[min(len(latencies) - 1, math.ceil(q * len(latencies)) - 1)] if latencies else float("nan")


def rows_by_key(database_url: str) -> dict[str | None, int]:
    async def count() -> dict[str | None, int]:
        engine = create_engine_for(database_url)
        try:
            async with engine.connect() as conn:
                query = select(UsageRecord.key_id, func.count()).group_by(UsageRecord.key_id)
                return {k: int(n) for k, n in (await conn.execute(query)).all()}
        finally:
            await engine.dispose()
    return asyncio.run(count())


def create_key(gateway: str, **limits: int) -> tuple[str, str]:
    """A new API key and its id (the ledger's ``key_id``)."""
    response = httpx.post(f"{gateway}/admin/keys", json={"name": f"hostile-{time.monotonic_ns()}", **limits},
                          headers={"Authorization": f"Bearer {ADMIN}"})
    assert response.status_code == 201, response.text
    return response.json()["key"], response.json()["id"]


def phase_figures(load: LoadResult, outcomes: Outcomes) -> dict[str, Any]:
    return {"p50_ms": round(percentile(load, 0.5) * 1000, 1), "p99_ms": round(percentile(load, 0.99) * 1000, 1),
            "good_statuses": dict(Counter(str(s.status) for s in load.samples)),
            "attack_outcomes": dict(sorted(outcomes.items()))}


def figures_of(phases: dict[str, tuple[LoadResult, Outcomes]], rows: dict[str | None, int], good_id: str,
               bad_ids: tuple[str, ...]) -> dict[str, Any]:
    """What docs/reliability.md quotes: each phase's p50/p99 and attack outcomes, ledger rows expected vs found."""
    answered = sum(1 for load, _ in phases.values() for s in load.samples if s.ok) + WARM_UP_REQUESTS
    recorded = sum(n for _, outcomes in phases.values() for outcome, n in outcomes.items()
                   if outcome.split(": ")[0] in RECORDED and outcome.split(": ")[1].isdigit())
    return {
        **{name: phase_figures(*phase) for name, phase in phases.items()},
        "good_client_errors": sum(1 for load, _ in phases.values() for s in load.samples if not s.ok),
        "good_rows_expected": answered, "good_rows_found": rows.get(good_id, 0),
        "lost_ledger_rows": answered - rows.get(good_id, 0),
        "attacker_rows_expected": recorded, "attacker_rows_found": sum(rows.get(i, 0) for i in bad_ids),
    }


def test_hostile_client_does_not_slow_or_unbill_a_well_behaved_one(replicas: list[Proc], tmp_path: Path) -> None:
    database_url = f"sqlite:///{tmp_path / 'ledger.db'}"
    # Default timeouts: the fault tests' 2 s attempt timeout would cut every giant request short.
    gateway = spawn_gateway(tmp_path, [r.url for r in replicas], "--database-url", database_url,
                            "--admin-key", ADMIN).wait_ready()
    try:
        good_key, good_id = create_key(gateway.url)
        # One attacker key per attacked phase: the edge phase's refusals spend their key's minute (a moving
        # window), which must not leave the giant phase with nothing but 429s.
        bad_key, bad_id = create_key(gateway.url, rpm=ATTACKER_RPM)
        giant_key, giant_id = create_key(gateway.url, rpm=ATTACKER_RPM)
        warm = run_load(gateway.url, good_key, rate=RATE, duration=WARM_UP_REQUESTS / RATE)
        assert all(s.ok for s in warm.samples), warm.samples  # key cached, replicas warm
        phases = {"calm": (run_load(gateway.url, good_key, rate=RATE, duration=DURATION), {}),
                  "edge attacks": attacked_phase(gateway, replicas[0], bad_key, good_key, giant=False)}
        before_giants = [low_priority_threads(r) for r in replicas]
        phases["giant requests"] = attacked_phase(gateway, replicas[0], giant_key, good_key, giant=True)
        after_giants = [low_priority_threads(r) for r in replicas]
        assert gateway.stop() in (0, -15)  # SIGTERM: the ledger is flushed before it exits
    finally:
        gateway.stop(signal.SIGKILL)

    figures = figures_of(phases, rows_by_key(database_url), good_id, (bad_id, giant_id))
    figures["low_priority_threads"] = {"before giant requests": before_giants, "after": after_giants}
    record("hostile client", figures)
    print(json.dumps(figures, indent=2))
    calm_p99 = figures["calm"]["p99_ms"]
    assert figures["good_client_errors"] == 0, figures
    assert figures["lost_ledger_rows"] == 0, figures
    assert figures["attacker_rows_found"] == figures["attacker_rows_expected"], figures
    assert figures["edge attacks"]["p99_ms"] <= 2 * calm_p99 + EDGE_SLACK_MS, figures
    # Not yet shown to meet the 2x goal under giant in-limit requests (see docs/reliability.md); what holds is that
    # the small client is interleaved with them, never queued behind a whole one (which takes several seconds) nor
    # behind its tokenization.
    assert figures["giant requests"]["p99_ms"] <= GIANT_P99_BOUND_MS, figures
    # Each replica scored its half of the giant requests on a bulk forward thread of lower priority (--bulk-nice),
    # started by the first of them (test replicas run one OpenMP thread: the team is that thread alone).
    if BULK_NICE != "0":
        assert all(after > before for before, after in zip(before_giants, after_giants, strict=True)), figures
