"""UsageLedger against real databases: SQLite in a temp file and the PostgreSQL test server."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, func, select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from rerankd.gateway.db import UsageDeadLetter, UsageRecord, init_schema
from rerankd.gateway.ledger import UsageEntry, UsageLedger

from .gateway_databases import DATABASE_KINDS, Database, open_database


@pytest.fixture(params=DATABASE_KINDS)
async def db(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Database]:
    """A fresh gateway schema: a new SQLite file, or a PostgreSQL schema unique to this test."""
    async with open_database(request.param, tmp_path) as database:
        yield database


@pytest.fixture(autouse=True)
def _in_tmp_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run in the test's own folder: a ledger without a SQLite file writes its dead-letter file to the
    working directory, which must not be the checkout."""
    monkeypatch.chdir(tmp_path)


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


INT_MAX = 2**31 - 1  # usage_records' INTEGER columns, as PostgreSQL sizes them


def good_rows(prefix: str, count: int) -> list[UsageEntry]:
    return [entry(f"{prefix}-{i}", tokens=10) for i in range(count)]


async def read_rows(engine: AsyncEngine) -> dict[str, dict[str, object]]:
    async with engine.connect() as conn:
        rows = (await conn.execute(select(UsageRecord.__table__))).mappings()
        return {row["request_id"]: dict(row) for row in rows}


def messages(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [record.getMessage() for record in caplog.records if record.name == "rerankd.gateway.ledger"]


async def test_poison_values_are_bounded_to_their_columns_and_never_block_good_rows(
        db: Database, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Issue 18: a 137-character request id (a client's 128 + the gateway's ``~`` suffix), a 300-character
    model, a 4,000-digit token count, -5 tokens, NaN latency, a NUL and a lone surrogate in text: each once
    failed the whole batch on PostgreSQL or SQLite, forever. Now each is bounded before it is queued and
    written with the good rows; nothing is refused, so nothing is set aside."""
    engine = db.open()
    ledger = UsageLedger(engine, batch_size=100, flush_interval=0.05, dead_letter_path=tmp_path / "dead.jsonl")
    ledger.start()
    client_id = "c" * 128
    poison = {
        "long-id-a": entry(f"{client_id}~0123abcd"),
        "long-id-b": entry(f"{client_id}~89abcdef"),  # same first 128 characters: must stay a second row
        "long-model": UsageEntry(request_id="long-model", key_id="key-a", model="m" * 300, documents=1,
                                 tokens=1, latency_ms=1.0, status=404, route="/v1/rerank"),
        "huge-tokens": entry("huge-tokens", tokens=10**3999),
        "negative": entry("negative", tokens=-5, documents=-1),
        "nan": UsageEntry(request_id="nan", key_id="key-a", model="m", documents=1, tokens=1,
                          latency_ms=float("nan"), status=200, route="/v1/rerank"),
        "bad-text": UsageEntry(request_id="bad-text", key_id="k\x00ey", model="m\ud800", documents=1, tokens=1,
                               latency_ms=float("inf"), status=200, route="/v1/rerank"),
    }
    for row in good_rows("before", 25):
        ledger.record(row)
    for row in poison.values():
        ledger.record(row)
    for row in good_rows("after", 25):
        ledger.record(row)
    assert await ledger.close() == 0
    assert ledger.dead_lettered == 0 and ledger.bounded == len(poison) and ledger.lost == 0
    assert ledger.summary().startswith("usage ledger flushed: 57 rows written")
    assert not (tmp_path / "dead.jsonl").exists()

    rows = await read_rows(engine)
    assert len(rows) == 50 + len(poison)
    assert all(f"{side}-{i}" in rows for side in ("before", "after") for i in range(25))
    long_ids = [request_id for request_id in rows if request_id.startswith(client_id[:100])]
    assert len(long_ids) == 2 and all(len(request_id) == 128 for request_id in long_ids)
    assert rows["long-model"]["model"] == "m" * 256
    assert rows["huge-tokens"]["tokens"] == INT_MAX
    assert (rows["negative"]["tokens"], rows["negative"]["documents"]) == (0, 0)
    assert rows["nan"]["latency_ms"] == 0.0
    bad_text = rows["bad-text"]
    assert "\x00" not in str(bad_text["key_id"]) and str(bad_text["key_id"]).startswith("k")
    assert str(bad_text["model"]).startswith("m") and bad_text["latency_ms"] < float("inf")
    assert not any("unavailable" in message for message in messages(caplog))


async def refuse_second_teapot(db: Database, engine: AsyncEngine) -> None:
    """Make the database refuse one row the ledger cannot foresee: a constraint it does not know about (as
    an operator's, or a newer schema's, would be): at most one row with status 418."""
    async with engine.begin() as conn:
        await conn.execute(text(
            f"CREATE UNIQUE INDEX one_teapot ON {db.table('usage_records')} (status) WHERE status = 418"))


async def test_a_row_the_database_refuses_is_set_aside_and_the_rest_are_written(
        db: Database, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    engine = db.open()
    await refuse_second_teapot(db, engine)
    ledger = UsageLedger(engine, batch_size=100, flush_interval=0.05, dead_letter_path=tmp_path / "dead.jsonl")
    ledger.start()
    for row in [*good_rows("before", 25), entry("teapot-1", status=418), entry("teapot-2", status=418),
                *good_rows("after", 25)]:
        ledger.record(row)
    await wait_until(lambda: ledger.pending() == 0)
    assert ledger.dead_lettered == 1 and ledger.written == 51
    assert await ledger.close() == 0
    assert ledger.summary().startswith("usage ledger flushed: 51 rows written")
    assert "1 rows refused by the database and set aside" in ledger.summary()

    rows = await read_rows(engine)
    assert len(rows) == 51 and "teapot-1" in rows and "teapot-2" not in rows
    async with engine.connect() as conn:
        letters = (await conn.execute(select(UsageDeadLetter.__table__))).mappings().all()
    assert [letter["request_id"] for letter in letters] == ["teapot-2"]
    assert json.loads(letters[0]["row"])["status"] == 418
    assert "unique" in letters[0]["reason"].lower()
    assert not (tmp_path / "dead.jsonl").exists()
    logged = messages(caplog)
    assert len([m for m in logged if "teapot-2" in m]) == 1  # the refused row, with the database's reason, once
    assert any("teapot-2" in m and "unique" in m.lower() for m in logged)
    assert not any("unavailable" in m for m in logged)  # the database was up all along


async def test_a_refused_row_goes_to_the_file_when_the_dead_letter_table_fails_too(
        db: Database, tmp_path: Path) -> None:
    engine = db.open()
    await refuse_second_teapot(db, engine)
    async with engine.begin() as conn:
        await conn.execute(text(f"DROP TABLE {db.table('usage_dead_letters')}"))
    dead_file = tmp_path / "dead.jsonl"
    ledger = UsageLedger(engine, batch_size=100, dead_letter_path=dead_file)
    for row in [*good_rows("good", 10), entry("teapot-1", status=418), entry("teapot-2", status=418)]:
        ledger.record(row)
    assert await ledger.close() == 0
    assert ledger.dead_lettered == 1 and ledger.saved_to_file == 1 and ledger.lost == 0
    assert await count_rows(engine) == 11
    lines = [json.loads(line) for line in dead_file.read_text().splitlines()]
    assert [line["row"]["request_id"] for line in lines] == ["teapot-2"]
    assert "unique" in lines[0]["reason"].lower()


async def test_an_outage_keeps_every_row_and_sets_none_aside(
        db: Database, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """SQLite locked by another writer / PostgreSQL gone from the network, then back: the rows wait in the
    buffer and are written once the database answers; an outage is never mistaken for refused rows."""
    async with db.outage() as (engine, go_down, come_back):
        ledger = UsageLedger(engine, batch_size=5, flush_interval=0.02, max_backoff=0.1,
                             dead_letter_path=tmp_path / "dead.jsonl")
        ledger.start()
        for row in good_rows("up", 10):
            ledger.record(row)
        await wait_until(lambda: ledger.pending() == 0)

        await go_down()
        for row in good_rows("down", 12):
            ledger.record(row)
        await wait_until(lambda: ledger.flush_failures >= 2)
        assert ledger.pending() == 12 and ledger.dead_lettered == 0
        assert any("database unavailable" in m for m in messages(caplog))

        await come_back()
        await wait_until(lambda: ledger.pending() == 0)
        assert await ledger.close() == 0
        assert ledger.dead_lettered == 0 and ledger.written == 22
        assert await count_rows(engine) == 22
        assert not (tmp_path / "dead.jsonl").exists()
        assert ledger.summary() == "usage ledger flushed: 22 rows written"
        assert not any("refused" in m for m in messages(caplog))


async def test_rows_unwritten_at_shutdown_are_saved_to_the_file_and_the_summary_says_so(
        db: Database, tmp_path: Path) -> None:
    dead_file = tmp_path / "dead.jsonl"
    ledger = UsageLedger(db.open(db.broken_url), flush_interval=0.02, max_backoff=0.05, dead_letter_path=dead_file)
    ledger.start()
    ledger.record(entry("kept-1"))
    ledger.record(entry("kept-2"))
    assert await ledger.close(timeout=0.3) == 2
    assert ledger.saved_to_file == 2 and ledger.dead_lettered == 0 and ledger.lost == 0
    lines = [json.loads(line) for line in dead_file.read_text().splitlines()]
    assert [line["row"]["request_id"] for line in lines] == ["kept-1", "kept-2"]
    assert all(line["reason"].startswith("not written before shutdown") for line in lines)
    summary = ledger.summary()
    assert summary.startswith("usage ledger NOT flushed: 0 rows written")
    assert "2 rows not written" in summary and str(dead_file) in summary


@pytest.mark.postgres
async def test_a_connection_killed_mid_insert_keeps_its_rows(tmp_path: Path) -> None:
    """PostgreSQL ends the ledger's connection in the middle of its INSERT (``pg_terminate_backend``, as a
    failover or an operator does): the batch is kept and written on the next attempt, not set aside."""
    async with open_database("postgres", tmp_path) as db:
        engine, admin = db.open(), db.open()
        ledger = UsageLedger(engine, batch_size=5, flush_interval=0.02, max_backoff=0.1,
                             dead_letter_path=tmp_path / "dead.jsonl")
        async with admin.connect() as blocker:
            await blocker.execute(text(f"LOCK TABLE {db.table('usage_records')} IN EXCLUSIVE MODE"))
            ledger.start()
            for row in good_rows("killed", 5):
                ledger.record(row)
            waiting = text("SELECT pid FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                           "AND query LIKE 'INSERT INTO%usage_records%'")
            pids: list[int] = []
            deadline = time.monotonic() + 10
            while not pids:  # the ledger's INSERT is now blocked behind the lock
                assert time.monotonic() < deadline, "the ledger's INSERT never waited on the lock"
                async with admin.connect() as probe:
                    pids = list((await probe.execute(waiting)).scalars())
                await asyncio.sleep(0.02)
            async with admin.connect() as killer:
                await killer.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pids[0]})
            await wait_until(lambda: ledger.flush_failures >= 1)
            assert ledger.pending() == 5 and ledger.dead_lettered == 0
            await blocker.rollback()  # the lock goes: the database takes writes again
        await wait_until(lambda: ledger.pending() == 0)
        assert await ledger.close() == 0
        assert ledger.dead_lettered == 0 and await count_rows(engine) == 5
        assert "AdminShutdown" in str(ledger.last_error) or "terminat" in str(ledger.last_error)


def refuse_writes(engine: AsyncEngine) -> None:
    """Every new connection of ``engine`` is read-only, as on a standby a failover left us pointing at:
    SQLite ``PRAGMA query_only``, PostgreSQL ``default_transaction_read_only`` (SQLSTATE 25006 on INSERT)."""
    def read_only(dbapi_connection: Any, _record: Any) -> None:
        if engine.dialect.name == "sqlite":
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA query_only = ON")
            cursor.close()
        else:
            dbapi_connection.run_async(lambda conn: conn.execute("SET default_transaction_read_only = on"))

    event.listen(engine.sync_engine, "connect", read_only)


async def test_a_read_only_database_keeps_rows_until_writes_work_again(db: Database, tmp_path: Path) -> None:
    standby = db.open()
    refuse_writes(standby)
    ledger = UsageLedger(standby, batch_size=5, flush_interval=0.02, max_backoff=0.05,
                         dead_letter_path=tmp_path / "dead.jsonl")
    ledger.start()
    for row in good_rows("ro", 7):
        ledger.record(row)
    await wait_until(lambda: ledger.flush_failures >= 2)
    assert ledger.pending() == 7 and ledger.dead_lettered == 0
    assert "read" in str(ledger.last_error).lower()  # "attempt to write a readonly database" / "read-only"

    primary = db.open()
    ledger.engine = primary  # failed over to a writable primary
    await wait_until(lambda: ledger.pending() == 0)
    assert await ledger.close() == 0
    assert ledger.dead_lettered == 0 and await count_rows(primary) == 7
