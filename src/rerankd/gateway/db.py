"""Database access for the gateway: one async engine factory and the ORM tables.

Why one module: the key store and the usage ledger share a database (SQLite embedded by default,
PostgreSQL in production), so the URL handling, the column types and the schema live in one place.

The schema is owned by Alembic migrations (``rerankd/gateway/migrations``); :func:`init_schema` runs
them to the newest revision at every gateway start, under a PostgreSQL advisory lock so several gateways
starting together do not race.
"""

from __future__ import annotations

import logging
import uuid
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import BigInteger, Boolean, DateTime, Float, Integer, String, Text, event, insert
from sqlalchemy.engine import Dialect, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

from rerankd.gateway.column_limits import ColumnLimits

__all__ = ["ApiKey", "AuditEvent", "Base", "UsageDeadLetter", "UsageRecord", "create_engine_for", "init_schema",
           "record_audit", "utcnow"]

logger = logging.getLogger(__name__)

# Plain driver names mapped to the asyncio driver we ship (the `gateway` extra installs both).
_ASYNC_DRIVERS = {
    "sqlite": "sqlite+aiosqlite",
    "sqlite+aiosqlite": "sqlite+aiosqlite",
    "postgres": "postgresql+asyncpg",
    "postgresql": "postgresql+asyncpg",
    "postgresql+asyncpg": "postgresql+asyncpg",
}


def utcnow() -> datetime:
    """The current time, timezone-aware in UTC (every timestamp the gateway stores is UTC)."""
    return datetime.now(timezone.utc)


def create_engine_for(url: str) -> AsyncEngine:
    """Build an async engine from a user-facing database URL.

    Operators write ``sqlite:///ledger.db`` or ``postgresql://user@host/db``, the forms every other tool
    uses; the gateway needs the asyncio drivers, so plain URLs are rewritten to ``sqlite+aiosqlite`` and
    ``postgresql+asyncpg``. A URL naming another (sync) driver is refused rather than silently swapped.
    """
    parsed = make_url(url)
    driver = _ASYNC_DRIVERS.get(parsed.drivername)
    if driver is None:
        raise ValueError(
            f"unsupported database URL scheme {parsed.drivername!r}: use sqlite:///PATH or postgresql://USER@HOST/DB"
        )
    parsed = parsed.set(drivername=driver)
    if driver.startswith("sqlite"):
        engine = create_async_engine(parsed)
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        return engine
    # pre_ping: after a PostgreSQL restart the pool would otherwise hand out dead connections once each.
    return create_async_engine(parsed, pool_pre_ping=True)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    """WAL lets readers (usage queries) run beside the ledger's writer; busy_timeout waits out short locks."""
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA busy_timeout=5000")
    finally:
        cursor.close()


async def init_schema(engine: AsyncEngine) -> None:
    """Bring the gateway tables to the newest migration (idempotent; safe to call at every start)."""
    from rerankd.gateway.migrate import upgrade_to_head

    await upgrade_to_head(engine)


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp that is always aware UTC in Python, whatever the backend stores.

    Why: SQLite keeps no zone and hands back naive values while PostgreSQL returns aware ones; callers
    should not have to know which database they talk to when comparing times.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            value = value.replace(tzinfo=timezone.utc)
        return value.astimezone(timezone.utc)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=timezone.utc)
        return value.astimezone(timezone.utc)


class Base(DeclarativeBase):
    """Declarative base holding the gateway's metadata (one schema for keys and usage)."""


class ApiKey(Base):
    """A gateway API key. Only the SHA-256 of the key is stored; the plaintext is shown once at creation."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=lambda: str(uuid.uuid4()))
    name: Mapped[str] = mapped_column(String(128), unique=True, nullable=False)
    key_hash: Mapped[str] = mapped_column(String(64), unique=True, nullable=False)
    key_prefix: Mapped[str] = mapped_column(String(16), nullable=False)
    rpm: Mapped[int | None] = mapped_column(Integer, nullable=True)
    tpm: Mapped[int | None] = mapped_column(Integer, nullable=True)
    # The default ``priority`` of the key's requests (vLLM's field: lower is served earlier); NULL: none.
    priority: Mapped[int | None] = mapped_column(Integer, nullable=True)
    is_admin: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False, default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class UsageRecord(Base):
    """One served request. ``request_id`` is unique so a retried ledger flush can never count it twice.

    ``key_id`` is nullable and not a foreign key: JWT callers and unauthenticated deployments are billed
    by subject or not at all, and usage rows must outlive a deleted key.
    """

    __tablename__ = "usage_records"

    # BIGINT on PostgreSQL (many rows over years); SQLite only auto-increments a plain INTEGER key.
    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    request_id: Mapped[str] = mapped_column(String(128), unique=True, nullable=False)
    key_id: Mapped[str | None] = mapped_column(String(128), nullable=True, index=True)
    model: Mapped[str] = mapped_column(String(256), nullable=False)
    # ``info`` states what the types cannot (read by ColumnLimits): counts and latencies are never negative.
    documents: Mapped[int] = mapped_column(Integer, nullable=False, info={"minimum": 0})
    tokens: Mapped[int] = mapped_column(Integer, nullable=False, info={"minimum": 0})
    latency_ms: Mapped[float] = mapped_column(Float, nullable=False, info={"minimum": 0.0})
    status: Mapped[int] = mapped_column(Integer, nullable=False, info={"minimum": 100, "maximum": 599})
    upstream: Mapped[str | None] = mapped_column(String(512), nullable=True)
    route: Mapped[str] = mapped_column(String(128), nullable=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False, default=utcnow, index=True)


class UsageDeadLetter(Base):
    """A usage row the database refused, set aside so it never blocks the rows after it.

    ``row`` is the refused row as JSON (ASCII-escaped, so any text fits); ``reason`` what the database said.
    An operator fixes the cause and re-inserts the rows; nothing here is billed until then.
    """

    __tablename__ = "usage_dead_letters"

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False, default=utcnow, index=True)
    request_id: Mapped[str | None] = mapped_column(String(128), nullable=True)
    reason: Mapped[str] = mapped_column(String(1024), nullable=False)
    row: Mapped[str] = mapped_column(Text, nullable=False)


class AuditEvent(Base):
    """One administrative action (key created or revoked) or security event, kept for audit.

    ``actor`` is the name of the credential that acted (never the credential); ``target`` what it acted on.
    """

    __tablename__ = "audit_events"

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False, default=utcnow, index=True)
    actor: Mapped[str] = mapped_column(String(128), nullable=False)
    action: Mapped[str] = mapped_column(String(64), nullable=False)
    target: Mapped[str | None] = mapped_column(String(256), nullable=True)
    request_id: Mapped[str | None] = mapped_column(String(128), nullable=True)
    client: Mapped[str | None] = mapped_column(String(128), nullable=True)


_AUDIT_LIMITS = ColumnLimits(AuditEvent.__table__)


async def record_audit(engine: AsyncEngine, actor: str, action: str, target: str | None,
                       request_id: str | None = None, client: str | None = None) -> None:
    """Commit one audit event now (admin actions are rare; the admin wants it stored before the answer).

    Every value is first cut to its column (a client's 128-character request id, a long key name as the
    target): an audit event must not fail, and fail the admin action with it, because one field is long.
    """
    fitted = _AUDIT_LIMITS.fit(
        {"actor": actor, "action": action, "target": target, "request_id": request_id, "client": client})
    if fitted.changes:
        logger.warning("audit event %s by %s: stored with %s", fitted.values["action"], fitted.values["actor"],
                       "; ".join(fitted.changes))
    async with engine.begin() as conn:
        await conn.execute(insert(AuditEvent).values(**fitted.values))
