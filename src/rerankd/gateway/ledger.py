"""The usage ledger: one row per served request, written in the background in batches.

Why a buffer and a writer task: the response path must never wait for, or fail because of, the
database. ``record`` only appends to an in-memory buffer; a background task inserts batches (one
``INSERT`` per batch). Inserts skip rows whose ``request_id`` already exists, so re-sending a batch whose
commit outcome was unknown is harmless.

Why no row can block the others: ``record`` first bounds every value to its column (``ColumnLimits``, read
from the table: strings cut to their length, integers clamped to the column's range, NaN/inf made finite),
so the database has nothing to refuse. Should it refuse a batch anyway, the failure is classified:

* database unavailable (connection refused or lost, locked or read-only, out of space): the rows stay
  buffered and the batch is retried with backoff, so an outage costs memory, not rows, up to ``max_pending``
  rows (past that new rows are dropped and counted);
* rows refused (integrity or data errors, values no driver can encode): the batch is written one row at a
  time and each refused row is set aside in ``usage_dead_letters`` with the database's reason, or, when even
  that insert fails, appended to a JSON-lines file (``dead_letter_path``). The rows after it go on.

At shutdown, rows the database never took (it was down until the end) are appended to the same file, so a
row the client was answered for survives in the database, the dead-letter table or the file.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from sqlalchemy import Date, MetaData, Table, case, cast, func, insert, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncEngine

from rerankd.gateway.column_limits import ColumnLimits
from rerankd.gateway.db import UsageRecord, utcnow
from rerankd.gateway.db_errors import database_unavailable, failure_reason
from rerankd.gateway.dead_letters import DeadLetters, default_dead_letter_file
from rerankd.gateway.migrate import translated_schema
from rerankd.observability import tracing

__all__ = ["UsageEntry", "UsageLedger"]

logger = logging.getLogger(__name__)

_VALUE_ORDER = ("request_id", "key_id", "model", "documents", "tokens", "latency_ms", "status", "upstream", "route",
                "created_at")
_COLUMNS = len(_VALUE_ORDER)  # bound parameters per row in the batch INSERT
_MAX_BIND_PARAMS = 30_000  # under PostgreSQL's 32767 and SQLite's 32766 limits per statement
_DROP_LOG_EVERY_S = 10.0  # at most one "dropping rows" or "values cut" line per this many seconds
_USAGE_LIMITS = ColumnLimits(UsageRecord.__table__)


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

    def fitted(self) -> tuple[UsageEntry, list[str]]:
        """This entry with every value bounded to its ``usage_records`` column, and what had to change."""
        fitted = _USAGE_LIMITS.fit({name: getattr(self, name) for name in _VALUE_ORDER})
        return (UsageEntry(**fitted.values) if fitted.changes else self), fitted.changes

    def as_json(self) -> str:
        """The row as one line of ASCII JSON (for the dead-letter table and file)."""
        values = {name: getattr(self, name) for name in _VALUE_ORDER}
        try:
            return json.dumps(values, default=str, sort_keys=True)
        except (TypeError, ValueError):  # a value not even str() can print (an unbounded huge int)
            return json.dumps({name: _printable(value) for name, value in values.items()}, sort_keys=True)


class UsageLedger:
    """Buffers :class:`UsageEntry` rows and writes them to ``usage_records`` from a background task.

    Lifecycle: ``start()`` once the event loop runs, ``record()`` per request (from the loop's thread),
    ``await close()`` at shutdown after the HTTP server stopped taking requests, then log ``summary()``.
    ``engine`` may be replaced at any time (e.g. after a failover); the next flush attempt uses the new one.

    ``dead_letter_path`` is the JSON-lines file of last resort (rows neither table would take, rows unwritten
    at shutdown); default :func:`~rerankd.gateway.dead_letters.default_dead_letter_file` of ``engine``.
    """

    def __init__(self, engine: AsyncEngine, *, batch_size: int = 200, flush_interval: float = 0.5,
                 max_pending: int = 100_000, max_backoff: float = 30.0,
                 dead_letter_path: str | Path | None = None) -> None:
        if batch_size < 1 or flush_interval <= 0 or max_pending < 1 or max_backoff <= 0:
            raise ValueError("batch_size and max_pending must be >= 1; flush_interval and max_backoff > 0")
        self.engine = engine
        self._batch_size = min(batch_size, _MAX_BIND_PARAMS // _COLUMNS)
        self._flush_interval = flush_interval
        self._max_pending = max_pending
        self._max_backoff = max_backoff
        chosen = Path(dead_letter_path) if dead_letter_path is not None else None
        self._dead_letters = DeadLetters(lambda: chosen or default_dead_letter_file(self.engine.url))
        # (monotonic time recorded, entry); only the writer removes from the left, and only after the row
        # was committed or set aside.
        self._buffer: deque[tuple[float, UsageEntry]] = deque()
        self._wakeup = asyncio.Event()  # a full batch is waiting, or we are stopping
        self._stopping = asyncio.Event()  # cuts backoff sleeps short at shutdown
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self._saved_at_close = False
        self._last_drop_log = float("-inf")
        self._last_bounded_log = float("-inf")
        self._driver_sql: dict[tuple[str, str | None], str] = {}  # (dialect, schema) → INSERT, compiled once
        self.dropped = 0
        """Rows refused because the buffer was full or the ledger closed."""
        self.flush_failures = 0
        """Batch writes that failed (the database was unavailable, or refused a row of the batch)."""
        self.written = 0
        """Rows sent in committed batches (duplicates skipped by the database included)."""
        self.bounded = 0
        """Rows queued with a value cut or clamped to its column (written like any other row)."""
        self.last_error: str | None = None
        """Why the database was last unavailable (None until it was)."""

    def record(self, entry: UsageEntry) -> None:
        """Queue one row for writing. Never blocks and never raises: usage must not break a response.

        Every value is bounded to its column here, before it is queued, so no value can make the database
        refuse the batch it lands in.
        """
        try:
            if self._closed or len(self._buffer) >= self._max_pending:
                self._drop()
                return
            try:
                entry, changes = entry.fitted()
            except Exception:  # pragma: no cover - defensive: queue it as it is, the writer sets it aside
                logger.exception("usage ledger: could not bound row %s to its columns", entry.request_id)
                changes = []
            if changes:
                self._note_bounded(entry, changes)
            self._buffer.append((time.monotonic(), entry))
            if len(self._buffer) >= self._batch_size:
                self._wakeup.set()
        except Exception:  # pragma: no cover - defensive: nothing above should raise
            logger.exception("usage ledger: could not queue a row")

    @property
    def dead_lettered(self) -> int:
        """Rows the database refused, set aside in ``usage_dead_letters`` or the dead-letter file."""
        return self._dead_letters.refused

    @property
    def saved_to_file(self) -> int:
        """Rows appended to the dead-letter file (refused rows no table took, rows unwritten at shutdown)."""
        return self._dead_letters.saved_to_file

    @property
    def lost(self) -> int:
        """Rows neither the database nor the dead-letter file took (each is logged in full at ERROR)."""
        return self._dead_letters.lost

    def pending(self) -> int:
        """Rows recorded but not yet committed to the database (or set aside as dead letters)."""
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

        Returns the number of rows the database did not take (0 after a clean shutdown; rows set aside as
        dead letters are not counted, they are stored). Those rows are appended to the dead-letter file,
        since shutdown cannot wait forever for a database that is down; ``summary()`` says what happened.
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
        if self._buffer and not self._saved_at_close:
            self._saved_at_close = True
            reason = f"not written before shutdown: {self.last_error or 'no time left'}"
            path = self._dead_letters.save_to_file([entry.as_json() for _, entry in self._buffer], reason)
            logger.error("usage ledger: %d rows could not be written to the database before shutdown (%s); %s",
                         len(self._buffer), self.last_error or "no time left",
                         f"saved to {path}" if path else "LOST (logged in full above)")
        return len(self._buffer)

    def summary(self) -> str:
        """One line for the shutdown log saying where every recorded row went (call after ``close()``).

        It starts with "usage ledger flushed" only when every row reached the database (its usage table, or
        its dead-letter table or file when refused); with "usage ledger NOT flushed" when rows did not
        (unwritten at shutdown, even if saved to the file; dropped; lost).
        """
        unwritten = len(self._buffer)
        unsafe = unwritten or self.dropped or self.lost
        parts = [f"{self.written} rows written"]
        if self.bounded:
            parts.append(f"{self.bounded} rows with values cut to their columns")
        if self.dead_lettered:
            parts.append(f"{self.dead_lettered} rows refused by the database and set aside")
        if unwritten:
            parts.append(f"{unwritten} rows not written ({self.last_error or 'no time left'})")
        if self.saved_to_file:
            parts.append(f"{self.saved_to_file} rows saved to {self._dead_letters.file()}")
        if self.dropped:
            parts.append(f"{self.dropped} rows dropped (buffer full or ledger closed)")
        if self.lost:
            parts.append(f"{self.lost} rows lost (logged in full)")
        head = "usage ledger NOT flushed" if unsafe else "usage ledger flushed"
        return f"{head}: {', '.join(parts)}"

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
        """Write buffered rows batch by batch; False when the database is unavailable (rows stay buffered).

        A batch the database refuses is written again one row at a time, so only its bad rows are set aside.
        """
        while self._buffer:
            batch = [entry for _, entry in itertools.islice(self._buffer, self._batch_size)]
            try:
                # A trace of its own: one write serves many requests (each has its gateway.ledger.record span).
                with tracing.span("gateway.ledger.write", attributes={"db.system.name": self.engine.dialect.name,
                                                                      "rerankd.ledger.rows": len(batch)}):
                    await self._insert(batch)
            except Exception as exc:
                self.flush_failures += 1
                if database_unavailable(exc):
                    self._note_unavailable(exc, len(batch))
                    return False
                logger.warning("usage ledger: the database refused a batch of %d rows (%s); writing them one "
                               "at a time to set the refused ones aside", len(batch), failure_reason(exc))
                if not await self._write_one_by_one(len(batch)):
                    return False
                continue
            for _ in batch:
                self._buffer.popleft()
            self.written += len(batch)
        return True

    async def _write_one_by_one(self, count: int) -> bool:
        """Insert the first ``count`` buffered rows singly; refused ones become dead letters.
        False as soon as the database is unavailable (the row in hand and those after it stay buffered)."""
        for _ in range(count):
            entry = self._buffer[0][1]
            try:
                await self._insert([entry])
            except Exception as exc:
                if database_unavailable(exc):
                    self._note_unavailable(exc, len(self._buffer))
                    return False
                await self._dead_letters.set_aside(self.engine, entry.request_id, entry.as_json(), failure_reason(exc))
            else:
                self.written += 1
            self._buffer.popleft()
        return True

    def _note_unavailable(self, exc: BaseException, kept: int) -> None:
        self.last_error = failure_reason(exc)
        logger.warning("usage ledger: database unavailable (%s); %d rows kept, retrying with backoff",
                       self.last_error, kept)

    def _note_bounded(self, entry: UsageEntry, changes: list[str]) -> None:
        self.bounded += 1
        now = time.monotonic()
        if now - self._last_bounded_log >= _DROP_LOG_EVERY_S:
            self._last_bounded_log = now
            logger.warning("usage ledger: row %s stored with values cut to their columns (%s); %d such rows so "
                           "far", entry.request_id, "; ".join(changes), self.bounded)

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
    own = UsageRecord.__table__
    assert isinstance(own, Table)
    table = own if schema is None else own.to_metadata(MetaData(), schema=schema)
    module = postgresql if dialect.name == "postgresql" else sqlite
    statement = module.insert(table).on_conflict_do_nothing(index_elements=["request_id"])
    compiled = statement.compile(dialect=dialect, column_keys=list(_VALUE_ORDER))
    if tuple(compiled.positiontup or ()) != _VALUE_ORDER:
        raise RuntimeError(f"unexpected parameter order {compiled.positiontup} for the usage INSERT")
    return compiled.string


def _printable(value: Any) -> Any:
    if isinstance(value, (str, float, bool)) or value is None:
        return value
    if isinstance(value, int):
        return value if value.bit_length() <= 64 else f"<int of {value.bit_length()} bits>"
    return repr(value)
