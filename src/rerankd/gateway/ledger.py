"""The usage ledger: one row per served request, written in the background in batches.

Why a buffer and a writer task: the response path must never wait for, or fail because of, the
database. ``record`` only appends to an in-memory buffer; a background task inserts batches (one
``INSERT`` per batch). A failed flush keeps its rows and is retried with backoff, so a database outage
costs memory, not rows, up to ``max_pending`` rows; past that new rows are dropped and counted.
Inserts skip rows whose ``request_id`` already exists, so re-sending a batch whose commit outcome
was unknown is harmless.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import Date, MetaData, case, cast, func, insert, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncEngine

from rerankd.gateway.db import UsageRecord, utcnow
from rerankd.gateway.migrate import translated_schema

__all__ = ["UsageEntry", "UsageLedger"]

logger = logging.getLogger(__name__)

_VALUE_ORDER = ("request_id", "key_id", "model", "documents", "tokens", "latency_ms", "status", "upstream", "route",
                "created_at")
_COLUMNS = len(_VALUE_ORDER)  # bound parameters per row in the batch INSERT
_MAX_BIND_PARAMS = 30_000  # under PostgreSQL's 32767 and SQLite's 32766 limits per statement
_DROP_LOG_EVERY_S = 10.0


@dataclass(frozen=True)
class UsageEntry:
    """One served request as the gateway saw it (the row shape of ``usage_records``)."""

    request_id: str
    key_id: str | None
    model: str
    documents: int
    tokens: int
    latency_ms: float
    status: int
    route: str
    upstream: str | None = None
    created_at: datetime = field(default_factory=utcnow)

    def _values(self, sqlite_time: bool) -> tuple[Any, ...]:
        """The row as driver parameters in :data:`_VALUE_ORDER`; ``created_at`` in UTC, as SQLAlchemy's
        SQLite DATETIME stores it (naive ISO text) or as an aware datetime for asyncpg."""
        created = self.created_at.astimezone(timezone.utc)
        when: Any = created.replace(tzinfo=None).isoformat(" ", "microseconds") if sqlite_time else created
        return (self.request_id, self.key_id, self.model, self.documents, self.tokens, self.latency_ms,
                self.status, self.upstream, self.route, when)


class UsageLedger:
    """Buffers :class:`UsageEntry` rows and writes them to ``usage_records`` from a background task.

    Lifecycle: ``start()`` once the event loop runs, ``record()`` per request (from the loop's thread),
    ``await close()`` at shutdown after the HTTP server stopped taking requests. ``engine`` may be
    replaced at any time (e.g. after a failover); the next flush attempt uses the new one.
    """

    def __init__(self, engine: AsyncEngine, *, batch_size: int = 200, flush_interval: float = 0.5,
                 max_pending: int = 100_000, max_backoff: float = 30.0) -> None:
        if batch_size < 1 or flush_interval <= 0 or max_pending < 1 or max_backoff <= 0:
            raise ValueError("batch_size and max_pending must be >= 1; flush_interval and max_backoff > 0")
        self.engine = engine
        self._batch_size = min(batch_size, _MAX_BIND_PARAMS // _COLUMNS)
        self._flush_interval = flush_interval
        self._max_pending = max_pending
        self._max_backoff = max_backoff
        # (monotonic time recorded, entry); only the writer removes from the left, and only after a commit.
        self._buffer: deque[tuple[float, UsageEntry]] = deque()
        self._wakeup = asyncio.Event()  # a full batch is waiting, or we are stopping
        self._stopping = asyncio.Event()  # cuts backoff sleeps short at shutdown
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self._last_drop_log = float("-inf")
        self._driver_sql: dict[tuple[str, str | None], str] = {}  # (dialect, schema) → INSERT, compiled once
        self.dropped = 0
        """Rows refused because the buffer was full or the ledger closed."""
        self.flush_failures = 0
        """Flush attempts that failed (each is retried; the rows stay buffered)."""
        self.written = 0
        """Rows sent in committed batches (duplicates skipped by the database included)."""

    def record(self, entry: UsageEntry) -> None:
        """Queue one row for writing. Never blocks and never raises: usage must not break a response."""
        try:
            if self._closed or len(self._buffer) >= self._max_pending:
                self._drop()
                return
            self._buffer.append((time.monotonic(), entry))
            if len(self._buffer) >= self._batch_size:
                self._wakeup.set()
        except Exception:  # pragma: no cover - defensive: nothing above should raise
            logger.exception("usage ledger: could not queue a row")

    def pending(self) -> int:
        """Rows recorded but not yet committed to the database."""
        return len(self._buffer)

    def lag_seconds(self) -> float:
        """Age of the oldest uncommitted row in seconds (0.0 when nothing is pending); alert when it grows."""
        if not self._buffer:
            return 0.0
        return max(0.0, time.monotonic() - self._buffer[0][0])

    def start(self) -> None:
        """Start the background writer on the running event loop (idempotent)."""
        if self._closed:
            raise RuntimeError("usage ledger is closed")
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run(), name="usage-ledger-writer")

    async def close(self, timeout: float = 10.0) -> int:
        """Stop the writer and flush what is left, retrying for up to ``timeout`` seconds.

        Returns the number of rows that could not be written (0 after a clean shutdown); those are logged,
        since shutdown cannot wait forever for a database that is down.
        """
        self._closed = True
        self._stopping.set()
        self._wakeup.set()
        deadline = time.monotonic() + timeout
        if self._task is not None:
            # A flush in flight normally ends quickly; against a hung database, wait_for cancels it.
            # Its rows are still buffered (they leave the buffer only after a commit).
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._task, timeout)
            self._task = None
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._drain(deadline), max(0.0, deadline - time.monotonic()))
        if self._buffer:
            logger.error("usage ledger: %d rows could not be written before shutdown", len(self._buffer))
        return len(self._buffer)

    async def usage_by_day(self, key_id: str | None) -> list[dict[str, Any]]:
        """Committed usage per UTC day, oldest first: ``day`` (YYYY-MM-DD), requests, failed, documents, tokens.

        ``key_id=None`` sums over all keys (admin view). Rows still buffered are not included.
        """
        day = self._day_expression()
        ok = UsageRecord.status == 200  # failed requests count as requests, never as billed documents/tokens
        statement = (
            select(day.label("day"), func.count().label("requests"),
                   func.coalesce(func.sum(case((ok, 0), else_=1)), 0).label("failed"),
                   func.coalesce(func.sum(case((ok, UsageRecord.documents), else_=0)), 0).label("documents"),
                   func.coalesce(func.sum(case((ok, UsageRecord.tokens), else_=0)), 0).label("tokens"))
            .group_by(day)
            .order_by(day)
        )
        if key_id is not None:
            statement = statement.where(UsageRecord.key_id == key_id)
        async with self.engine.connect() as conn:
            rows = (await conn.execute(statement)).all()
        return [{"day": str(row.day), "requests": int(row.requests), "failed": int(row.failed),
                 "documents": int(row.documents),
                 "tokens": int(row.tokens)} for row in rows]

    async def _drain(self, deadline: float) -> None:
        failures = 0
        while self._buffer and not await self._flush_all():
            failures += 1
            delay = self._backoff(failures)
            if time.monotonic() + delay > deadline:
                return
            await asyncio.sleep(delay)

    def _day_expression(self) -> Any:
        if self.engine.dialect.name == "postgresql":
            # Day boundaries in UTC whatever the session's TimeZone setting is.
            return cast(func.timezone("UTC", UsageRecord.created_at), Date)
        return func.date(UsageRecord.created_at)  # SQLite stores UTC text; date() yields 'YYYY-MM-DD'

    def _drop(self) -> None:
        self.dropped += 1
        now = time.monotonic()
        if now - self._last_drop_log >= _DROP_LOG_EVERY_S:
            self._last_drop_log = now
            reason = "closed" if self._closed else f"over {self._max_pending} rows pending"
            logger.warning("usage ledger: dropping rows (%s); %d dropped so far", reason, self.dropped)

    def _backoff(self, failures: int) -> float:
        return min(self._max_backoff, 0.1 * 2 ** min(failures - 1, 20))

    async def _run(self) -> None:
        failures = 0
        while not self._stopping.is_set():
            if failures:
                # Back off without reacting to new rows: hammering a database that is down helps no one.
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), self._backoff(failures))
            elif len(self._buffer) < self._batch_size:
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._wakeup.wait(), self._flush_interval)
                self._wakeup.clear()
            if self._stopping.is_set():
                return  # close() does the final flush with its own deadline
            failures = 0 if await self._flush_all() else failures + 1

    async def _flush_all(self) -> bool:
        """Write buffered rows batch by batch; False at the first failed batch (its rows stay buffered)."""
        while self._buffer:
            batch = [entry for _, entry in itertools.islice(self._buffer, self._batch_size)]
            try:
                await self._insert(batch)
            except Exception as exc:
                self.flush_failures += 1
                logger.warning("usage ledger: flush of %d rows failed (%d pending, will retry): %s",
                               len(batch), len(self._buffer), exc)
                return False
            for _ in batch:
                self._buffer.popleft()
            self.written += len(batch)
        return True

    async def _insert(self, batch: list[UsageEntry]) -> None:
        """One executemany of the batch, as plain driver SQL with ready-made parameter tuples.

        Why not ``conn.execute(insert(...), rows)``: SQLAlchemy's per-row parameter processing (dicts,
        type processors, the SQLite DATETIME formatter) runs on the event loop, where every in-flight request
        waits for it. Building the tuples directly lowered the loop stall of a 250-row SQLite insert from a
        median 3.6–4.2 ms (max 8.4) to 3.2–3.5 ms (max 4.7): ``bench/ledger_loop_stall.py``.
        Databases other than SQLite and PostgreSQL keep the portable path (a duplicate request id fails
        the batch there instead of being skipped).
        """
        dialect = self.engine.dialect
        if dialect.name not in ("sqlite", "postgresql"):
            async with self.engine.begin() as conn:
                rows = [dict(zip(_VALUE_ORDER, entry._values(sqlite_time=False), strict=True)) for entry in batch]
                await conn.execute(insert(UsageRecord), rows)
            return
        where = (dialect.name, translated_schema(self.engine))
        sql = self._driver_sql.get(where)
        if sql is None:
            sql = self._driver_sql[where] = _compiled_insert(dialect, where[1])
        sqlite_times = dialect.name == "sqlite"
        params = [entry._values(sqlite_times) for entry in batch]
        async with self.engine.begin() as conn:
            await conn.exec_driver_sql(sql, params)


def _compiled_insert(dialect: Any, schema: str | None) -> str:
    """``INSERT … ON CONFLICT (request_id) DO NOTHING`` in the dialect's own SQL and parameter style,
    with the parameters in :data:`_VALUE_ORDER`, into ``schema`` when the engine translates to one
    (driver SQL skips SQLAlchemy's ``schema_translate_map``, so the table is qualified here)."""
    table = UsageRecord.__table__ if schema is None else UsageRecord.__table__.to_metadata(MetaData(), schema=schema)
    module = postgresql if dialect.name == "postgresql" else sqlite
    statement = module.insert(table).on_conflict_do_nothing(index_elements=["request_id"])
    compiled = statement.compile(dialect=dialect, column_keys=list(_VALUE_ORDER))
    if tuple(compiled.positiontup or ()) != _VALUE_ORDER:
        raise RuntimeError(f"unexpected parameter order {compiled.positiontup} for the usage INSERT")
    return compiled.string
