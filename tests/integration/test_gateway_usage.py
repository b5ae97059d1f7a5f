"""The usage ledger through a real gateway process, on SQLite and on the real PostgreSQL: one row per
answered request, including requests in flight when the gateway is stopped and restarted."""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, select, text

from rerankd.gateway.db import UsageRecord, create_engine_for
from support import Fleet, free_port, spawn_gateway

pytestmark = pytest.mark.timeout(240)

ADMIN = "usage-admin"
PG_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/test"


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A new, empty database: a SQLite file, or a PostgreSQL database created for this test."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'ledger.db'}"
        return
    name = f"rerankd_usage_{uuid.uuid4().hex[:10]}"

    async def admin(statement: str) -> None:
        engine = create_engine_for(PG_ADMIN_URL).execution_options(isolation_level="AUTOCOMMIT")
        try:
            async with engine.connect() as conn:
                await conn.execute(text(statement))
        finally:
            await engine.dispose()

    try:
        asyncio.run(admin(f'CREATE DATABASE "{name}"'))
    except OSError as exc:
        pytest.skip(f"PostgreSQL unreachable: {exc}")
    try:
        yield f"postgresql://postgres@127.0.0.1:5432/{name}"
    finally:
        asyncio.run(admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def ledger_rows(database_url: str) -> dict[int, int]:
    """Rows per status code, read straight from the database."""
    async def count() -> dict[int, int]:
        engine = create_engine_for(database_url)
        try:
            async with engine.connect() as conn:
                rows = await conn.execute(select(UsageRecord.status, func.count()).group_by(UsageRecord.status))
                return {int(status): int(n) for status, n in rows}
        finally:
            await engine.dispose()
    return asyncio.run(count())


def fire(url: str, key: str, n: int, answered: list[int], stop_after: threading.Event | None = None) -> None:
    """Send ``n`` requests from 4 threads; record the status of every request that got an answer."""
    lock = threading.Lock()
    counter = iter(range(n))

    def worker() -> None:
        with httpx.Client(timeout=30, headers={"Authorization": f"Bearer {key}"}) as client:
            for i in iter(lambda: next(counter, None), None):
                body = {"query": f"q{i}", "documents": ["alpha", "beta", "gamma"]}
                if i % 10 == 9:
                    # above the model length: the replica's 400 (the gateway cannot know its length); still one row
                    body["truncate_prompt_tokens"] = 1_000_000
                try:
                    status = client.post(f"{url}/v1/rerank", json=body).status_code
                except httpx.HTTPError:
                    continue  # never answered (the gateway was stopping): must not be billed either
                with lock:
                    answered.append(status)
                if i == 20 and stop_after is not None:
                    stop_after.set()

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def test_one_row_per_answered_request_across_a_gateway_restart(
        fleet: Fleet, tmp_path: Path, database_url: str) -> None:
    port = free_port()
    args = ["--database-url", database_url, "--admin-key", ADMIN, "--drain-seconds", "10"]
    first = spawn_gateway(tmp_path, fleet.urls[:2], *args, port=port).wait_ready()
    key = httpx.post(f"{first.url}/admin/keys", json={"name": "billing"},
                     headers={"Authorization": f"Bearer {ADMIN}"}).json()["key"]
    answered: list[int] = []
    halfway = threading.Event()
    sender = threading.Thread(target=fire, args=(first.url, key, 120, answered, halfway))
    sender.start()
    halfway.wait(60)
    # SIGTERM while requests are in flight: drain, flush, exit (uvicorn re-raises the signal after its
    # graceful shutdown, so the exit status is -SIGTERM).
    assert first.stop() in (0, -15)
    assert "usage ledger flushed" in first.log_tail(100_000)
    sender.join()

    second = spawn_gateway(tmp_path, fleet.urls[:2], *args, port=port).wait_ready()
    try:
        fire(second.url, key, 30, answered)
    finally:
        assert second.stop() in (0, -15)
    rows = ledger_rows(database_url)
    expected = {status: answered.count(status) for status in set(answered)}
    assert rows == expected, (rows, expected)
    assert expected.get(200, 0) >= 40 and expected.get(400, 0) >= 3
