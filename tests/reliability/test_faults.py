"""Faults under load, each with its figures: client errors, p99 during the fault, recovery time, and ledger
rows against answered requests. All traffic is real HTTP on 127.0.0.1; Redis and PostgreSQL are private
instances of the real servers so they can be stopped without disturbing anything else.

Figures go to ``test-artifacts/reliability.json`` (docs/reliability.md's table comes from it).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from fault_proxy import FlakyProxy
from reliability.figures import fault_figures, record, run_load
from rerankd.gateway.db import UsageRecord, create_engine_for
from support import Fleet, Proc, free_port, metric_value, spawn_gateway, wait_until

pytestmark = pytest.mark.timeout(300)

ADMIN = "reliability-admin"
RATE, DURATION, FAULT_AT = 20.0, 12.0, 3.0
GATEWAY_FLAGS = ["--admin-key", ADMIN, "--health-interval", "0.5", "--attempt-timeout", "2",
                 "--total-timeout", "20", "--drain-seconds", "15"]


def start_gateway(tmp: Path, upstreams: list[str], database_url: str, *extra: str, port: int | None = None) -> Proc:
    return spawn_gateway(tmp, upstreams, "--database-url", database_url, *GATEWAY_FLAGS, *extra,
                         port=port).wait_ready()


def new_key(gateway: str, **limits: int) -> str:
    response = httpx.post(f"{gateway}/admin/keys", json={"name": f"load-{time.monotonic_ns()}", **limits},
                          headers={"Authorization": f"Bearer {ADMIN}"})
    assert response.status_code == 201, response.text
    return response.json()["key"]


def ledger_rows(database_url: str) -> int:
    async def count() -> int:
        engine = create_engine_for(database_url)
        try:
            async with engine.connect() as conn:
                return int((await conn.execute(select(func.count()).select_from(UsageRecord))).scalar_one())
        finally:
            await engine.dispose()
    return asyncio.run(count())


def run_case(case: str, gateway: Proc, database_url: str, actions: list[tuple[float, str, Callable[[], Any]]],
             *, duration: float = DURATION, key: str | None = None, url: str | None = None) -> dict[str, Any]:
    """Load the gateway with the faults in ``actions``, stop it gracefully, compare the ledger, record figures."""
    key = key or new_key(gateway.url)
    httpx.post(f"{gateway.url}/v1/rerank", json={"query": "warm", "documents": ["up"]},
               headers={"Authorization": f"Bearer {key}"})  # caches the key; row counted below
    run = run_load(url or gateway.url, key, rate=RATE, duration=duration, actions=actions)
    figures = fault_figures(run, FAULT_AT)
    assert gateway.stop() in (0, -15)
    figures["ledger_rows"] = ledger_rows(database_url) - 1  # minus the warm-up request
    figures["lost_ledger_rows"] = figures["answered"] - figures["ledger_rows"]
    record(case, figures)
    return figures


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'ledger.db'}"


def test_replica_killed(fleet: Fleet, tmp_path: Path, sqlite_url: str) -> None:
    gateway = start_gateway(tmp_path, fleet.urls, sqlite_url)
    try:
        figures = run_case("replica killed (SIGKILL 1 of 3)", gateway, sqlite_url,
                           [(FAULT_AT, "kill -9 replica", lambda: fleet.replicas[0].stop(signal.SIGKILL))])
    finally:
        gateway.stop()
        fleet.restart(0)
    assert figures["client_errors"] == 0, figures
    assert figures["lost_ledger_rows"] == 0, figures


def test_replica_frozen(fleet: Fleet, tmp_path: Path, sqlite_url: str) -> None:
    frozen = fleet.replicas[1].popen
    assert frozen is not None
    gateway = start_gateway(tmp_path, fleet.urls, sqlite_url)
    try:
        figures = run_case("replica frozen (SIGSTOP 6 s)", gateway, sqlite_url, [
            (FAULT_AT, "SIGSTOP replica", lambda: frozen.send_signal(signal.SIGSTOP)),
            (FAULT_AT + 6, "SIGCONT replica", lambda: frozen.send_signal(signal.SIGCONT)),
        ])
    finally:
        frozen.send_signal(signal.SIGCONT)
        gateway.stop()
    assert figures["client_errors"] == 0, figures
    assert figures["lost_ledger_rows"] == 0, figures
    assert figures["p99_fault_ms"] <= 2000 * 2 + 1000  # at most one --attempt-timeout (2 s) lost per request


def test_replica_answering_500s(fleet: Fleet, tmp_path: Path, sqlite_url: str) -> None:
    with FlakyProxy(fleet.urls[2]) as flaky:
        gateway = start_gateway(tmp_path, [flaky.url, fleet.urls[0], fleet.urls[1]], sqlite_url)

        def fail(on: bool) -> Callable[[], None]:
            return lambda: setattr(flaky, "failing", on)

        try:
            figures = run_case("replica answers 500s (6 s)", gateway, sqlite_url,
                               [(FAULT_AT, "replica fails", fail(True)), (FAULT_AT + 6, "replica heals", fail(False))])
        finally:
            gateway.stop()
    assert figures["client_errors"] == 0, figures
    assert figures["lost_ledger_rows"] == 0, figures


def test_gateway_restarted(fleet: Fleet, tmp_path: Path, sqlite_url: str) -> None:
    port = free_port()
    holder = {"gateway": start_gateway(tmp_path, fleet.urls, sqlite_url, port=port)}
    key = new_key(holder["gateway"].url)

    def restart() -> None:
        holder["gateway"].stop()  # SIGTERM: drain in-flight requests, flush the ledger, exit
        holder["gateway"] = start_gateway(tmp_path, fleet.urls, sqlite_url, port=port)

    httpx.post(f"{holder['gateway'].url}/v1/rerank", json={"query": "warm", "documents": ["up"]},
               headers={"Authorization": f"Bearer {key}"})
    run = run_load(f"http://127.0.0.1:{port}", key, rate=RATE, duration=DURATION,
                   actions=[(FAULT_AT, "restart gateway", restart)])
    figures = fault_figures(run, FAULT_AT)
    assert holder["gateway"].stop() in (0, -15)
    figures["ledger_rows"] = ledger_rows(sqlite_url) - 1
    figures["lost_ledger_rows"] = figures["answered"] - figures["ledger_rows"]
    record("gateway restarted (SIGTERM + start)", figures)
    # One gateway restarting cannot answer while it is down (clients see refused connections; run two
    # behind a load balancer, as the Kubernetes manifests do); but every answered request is billed once.
    assert figures["lost_ledger_rows"] == 0, figures
    assert all(s.ok or not s.answered for s in run.samples), figures  # 200, or no HTTP answer at all


@pytest.fixture
def private_redis() -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    port = free_port()
    proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while subprocess.run(["redis-cli", "-p", str(port), "ping"], capture_output=True).stdout.strip() != b"PONG":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    yield f"redis://127.0.0.1:{port}/0", proc
    proc.kill()
    proc.wait(10)


@pytest.mark.redis
def test_redis_stopped(fleet: Fleet, tmp_path: Path, sqlite_url: str,
                       private_redis: tuple[str, subprocess.Popen[bytes]]) -> None:
    redis_url, redis = private_redis
    gateway = start_gateway(tmp_path, fleet.urls, sqlite_url, "--redis-url", redis_url)
    try:
        key = new_key(gateway.url, rpm=1_000_000)  # limited, so every request asks Redis
        figures = run_case("Redis stopped (fail-open)", gateway, sqlite_url,
                           [(FAULT_AT, "kill -9 redis", lambda: redis.send_signal(signal.SIGKILL))], key=key)
    finally:
        gateway.stop()
    assert figures["client_errors"] == 0, figures
    assert figures["lost_ledger_rows"] == 0, figures


class PrivatePostgres:
    """A throwaway PostgreSQL cluster (the machine's own binaries) on a free port, run as user postgres."""

    def __init__(self) -> None:
        bindir = next(Path("/usr/lib/postgresql").glob("*/bin"), None)
        if bindir is None or shutil.which("runuser") is None:
            pytest.skip("PostgreSQL server binaries or runuser not available")
        self.bin = bindir
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="rerankd-pg-"))
        os.chmod(self.dir, 0o755)
        shutil.chown(self.dir, "postgres", "postgres")
        self.data = self.dir / "data"
        self._as_postgres("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync")
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _as_postgres(self, tool: str, *args: str) -> None:
        subprocess.run(["runuser", "-u", "postgres", "--", str(self.bin / tool), *args], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=self.dir)

    def start(self) -> None:
        self._as_postgres("pg_ctl", "-D", str(self.data), "-w", "-l", str(self.dir / "log"), "-o",
                          f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off", "start")

    def stop(self) -> None:
        self._as_postgres("pg_ctl", "-D", str(self.data), "-w", "-m", "immediate", "stop")

    def remove(self) -> None:
        subprocess.run(["runuser", "-u", "postgres", "--", str(self.bin / "pg_ctl"), "-D", str(self.data),
                        "-m", "immediate", "stop"], capture_output=True)
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.mark.postgres
def test_postgres_stopped(fleet: Fleet, tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to run a private PostgreSQL as user postgres")
    pg = PrivatePostgres()
    try:
        pg.start()
        gateway = start_gateway(tmp_path, fleet.urls, pg.url)
        try:
            figures = run_case("PostgreSQL stopped (5 s)", gateway, pg.url, [
                (FAULT_AT, "stop postgres", pg.stop), (FAULT_AT + 5, "start postgres", pg.start)])
        finally:
            gateway.stop()
    finally:
        pg.remove()
    assert figures["client_errors"] == 0, figures
    assert figures["lost_ledger_rows"] == 0, figures


def test_rolling_restart_of_every_replica(fleet: Fleet, tmp_path: Path, sqlite_url: str) -> None:
    gateway = start_gateway(tmp_path, fleet.urls, sqlite_url)

    def roll() -> None:
        for i in range(len(fleet.replicas)):
            # graceful: finishes what it has, then exits (and is started again, waited ready)
            assert fleet.restart(i, signal.SIGTERM) is not None
            # The next one goes only once the gateway's health checks count every replica in again.
            wait_until(lambda: metric_value(gateway.url, "rerankd_gateway_healthy_upstreams") == len(fleet.urls),
                       30, f"the gateway to see replica {i} healthy again")

    try:
        figures = run_case("rolling restart of all 3 replicas (graceful drain)", gateway, sqlite_url,
                           [(FAULT_AT, "rolling restart", roll)], duration=45.0)
    finally:
        gateway.stop()
        fleet.ensure_all_up()
    assert "rolling restart done" in figures["events"], figures
    assert figures["client_errors"] == 0, figures
    assert figures["lost_ledger_rows"] == 0, figures
