"""UsageLedger against real databases: SQLite in a temp file and the PostgreSQL test server."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from rerankd.gateway.db import UsageRecord, create_engine_for, init_schema
from rerankd.gateway.ledger import UsageEntry, UsageLedger

PG_URL = "postgresql://postgres@127.0.0.1:5432/test"


@dataclass
class Database:
    """Opens engines on one test database, as many times as a test wants (to simulate restarts)."""

    url: str
    broken_url: str  # same dialect, but nothing answers there
    schema: str | None = None
    _opened: list[AsyncEngine] = field(default_factory=list)

    def open(self, url: str | None = None) -> AsyncEngine:
        engine = create_engine_for(url or self.url)
        self._opened.append(engine)
        if self.schema is None:
            return engine
        return engine.execution_options(schema_translate_map={None: self.schema})

    async def dispose_all(self) -> None:
        for engine in self._opened:
            await engine.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def db(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Database]:
    """A fresh gateway schema: a new SQLite file, or a PostgreSQL schema unique to this test."""
    if request.param == "sqlite":
        # SQLite cannot create a file in a directory that does not exist (even as root, unlike chmod).
        database = Database(f"sqlite:///{tmp_path / 'ledger.db'}", f"sqlite:///{tmp_path / 'missing' / 'x.db'}")
        await init_schema(database.open())
        yield database
        await database.dispose_all()
        return
    schema = f"t_{uuid.uuid4().hex[:12]}"
    admin = create_engine_for(PG_URL)
    try:
        async with admin.begin() as conn:
            await conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    except OSError as exc:
        await admin.dispose()
        pytest.skip(f"PostgreSQL at {PG_URL} unreachable: {exc}")
    database = Database(PG_URL, "postgresql://postgres@127.0.0.1:1/test", schema=schema)
    try:
        await init_schema(database.open())
        yield database
    finally:
        await database.dispose_all()
        async with admin.begin() as conn:
            await conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        await admin.dispose()


def entry(request_id: str, *, key_id: str | None = "key-a", documents: int = 3, tokens: int = 100,
          created_at: datetime | None = None, status: int = 200) -> UsageEntry:
    extra = {} if created_at is None else {"created_at": created_at}
    return UsageEntry(request_id=request_id, key_id=key_id, model="qwen3-reranker-0.6b", documents=documents,
                      tokens=tokens, latency_ms=12.5, status=status, route="/v1/rerank",
                      upstream="http://10.0.0.1:8000", **extra)


async def count_rows(engine: AsyncEngine) -> int:
    async with engine.connect() as conn:
        return int((await conn.execute(select(func.count()).select_from(UsageRecord))).scalar_one())


async def wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


async def test_every_recorded_row_is_written_by_close(db: Database) -> None:
    engine = db.open()
    ledger = UsageLedger(engine, batch_size=50, flush_interval=0.05)
    ledger.start()
    for i in range(523):
        ledger.record(entry(f"req-{i}"))
    assert await ledger.close() == 0
    assert ledger.pending() == 0 and ledger.lag_seconds() == 0.0 and ledger.dropped == 0
    assert await count_rows(engine) == 523


async def test_rows_are_flushed_in_the_background(db: Database) -> None:
    engine = db.open()
    ledger = UsageLedger(engine, batch_size=10, flush_interval=0.05)
    ledger.start()
    for i in range(25):  # two full batches and a partial one that waits for the interval
        ledger.record(entry(f"bg-{i}"))
    await wait_until(lambda: ledger.pending() == 0)
    assert await count_rows(engine) == 25
    await ledger.close()


async def test_duplicate_request_id_is_counted_once(db: Database) -> None:
    engine = db.open()
    ledger = UsageLedger(engine, batch_size=100, flush_interval=0.05)
    ledger.start()
    ledger.record(entry("dup"))
    ledger.record(entry("dup"))  # same batch
    await wait_until(lambda: ledger.pending() == 0)
    ledger.record(entry("dup"))  # a later batch (e.g. a retried flush)
    ledger.record(entry("other"))
    assert await ledger.close() == 0
    assert await count_rows(engine) == 2
    assert await ledger.usage_by_day("key-a") == [
        {"day": datetime.now(timezone.utc).date().isoformat(), "requests": 2, "failed": 0, "documents": 6,
         "tokens": 200}]


async def test_rows_survive_a_restart(db: Database) -> None:
    first = db.open()
    ledger = UsageLedger(first)
    ledger.start()
    for i in range(7):
        ledger.record(entry(f"r-{i}", tokens=10))
    await ledger.close()
    await first.dispose()

    reopened = db.open()
    await init_schema(reopened)  # a restarted gateway runs this again; it must not touch existing rows
    days = await UsageLedger(reopened).usage_by_day(None)
    assert [(day["requests"], day["tokens"]) for day in days] == [(7, 70)]


async def test_failed_flush_keeps_rows_and_writes_them_once_the_database_is_back(db: Database) -> None:
    ledger = UsageLedger(db.open(db.broken_url), batch_size=5, flush_interval=0.02, max_backoff=0.05)
    ledger.start()
    for i in range(12):
        ledger.record(entry(f"down-{i}"))
    await wait_until(lambda: ledger.flush_failures >= 2)
    assert ledger.pending() == 12
    assert ledger.lag_seconds() > 0

    good = db.open()
    ledger.engine = good  # the database is reachable again
    await wait_until(lambda: ledger.pending() == 0)
    assert ledger.lag_seconds() == 0.0
    assert await count_rows(good) == 12
    assert await ledger.close() == 0


async def test_close_gives_up_after_its_timeout_and_reports_what_is_left(db: Database) -> None:
    ledger = UsageLedger(db.open(db.broken_url), flush_interval=0.02, max_backoff=0.05)
    ledger.start()
    ledger.record(entry("lost-1"))
    ledger.record(entry("lost-2"))
    started = time.monotonic()
    assert await ledger.close(timeout=0.3) == 2
    assert time.monotonic() - started < 5
    ledger.record(entry("after-close"))  # never raises, even after close
    assert ledger.dropped == 1


async def test_usage_by_day_sums_per_day_and_key(db: Database) -> None:
    ledger = UsageLedger(db.open(), batch_size=3)
    day1 = datetime(2026, 3, 1, 23, 59, tzinfo=timezone.utc)
    day2 = datetime(2026, 3, 2, 0, 1, tzinfo=timezone.utc)
    ledger.record(entry("a1", key_id="a", documents=2, tokens=20, created_at=day1))
    ledger.record(entry("a2", key_id="a", documents=3, tokens=30, created_at=day1))
    ledger.record(entry("a3", key_id="a", documents=4, tokens=40, created_at=day2))
    ledger.record(entry("b1", key_id="b", documents=10, tokens=1000, created_at=day2))
    ledger.record(entry("anon", key_id=None, documents=1, tokens=1, created_at=day2))
    ledger.record(entry("a-429", key_id="a", documents=7, tokens=0, status=429, created_at=day2))
    assert await ledger.close() == 0  # close() alone flushes, even if start() was never called

    assert await ledger.usage_by_day("a") == [
        {"day": "2026-03-01", "requests": 2, "failed": 0, "documents": 5, "tokens": 50},
        {"day": "2026-03-02", "requests": 2, "failed": 1, "documents": 4, "tokens": 40},
    ]
    assert await ledger.usage_by_day(None) == [
        {"day": "2026-03-01", "requests": 2, "failed": 0, "documents": 5, "tokens": 50},
        {"day": "2026-03-02", "requests": 4, "failed": 1, "documents": 15, "tokens": 1041},
    ]
    assert await ledger.usage_by_day("nobody") == []


async def test_record_never_blocks_and_drops_past_the_bound(db: Database) -> None:
    ledger = UsageLedger(db.open(), max_pending=5)
    assert ledger.lag_seconds() == 0.0
    for i in range(8):
        ledger.record(entry(f"b-{i}"))
    assert ledger.pending() == 5 and ledger.dropped == 3
    await asyncio.sleep(0.01)
    assert ledger.lag_seconds() > 0
    assert await ledger.close() == 0
    assert await count_rows(ledger.engine) == 5


async def test_rows_read_back_exactly_as_recorded(db: Database) -> None:
    """The batch INSERT is plain driver SQL with hand-built parameters: every column, the UTC timestamp to
    the microsecond (given in another zone) and NULLs must come back through the ORM as they went in."""
    engine = db.open()
    ledger = UsageLedger(engine)
    ledger.start()
    east = timezone(timedelta(hours=8))
    sent = [entry("r1", created_at=datetime(2026, 3, 4, 23, 59, 58, 123456, tzinfo=east), status=499),
            UsageEntry(request_id="r2", key_id=None, model="m", documents=1, tokens=0, latency_ms=0.25,
                       status=401, route="/rerank", upstream=None)]
    for row in sent:
        ledger.record(row)
    await ledger.close()
    async with engine.connect() as conn:
        got = {r["request_id"]: r for r in (await conn.execute(select(UsageRecord.__table__))).mappings()}
    for want in sent:
        row = got[want.request_id]
        columns = ("key_id", "model", "documents", "tokens", "latency_ms", "status", "route", "upstream")
        assert tuple(row[c] for c in columns) == tuple(getattr(want, c) for c in columns)
        assert row["created_at"] == want.created_at  # aware UTC on both databases, to the microsecond
    assert got["r1"]["created_at"].tzinfo is not None and got["r1"]["created_at"].hour == 15
    # The day bucket of billing sees the UTC date (15:59 UTC on the 4th, not the 5th in UTC+8).
    days = await UsageLedger(engine).usage_by_day(None)
    assert any(str(d["day"]) == "2026-03-04" for d in days)
