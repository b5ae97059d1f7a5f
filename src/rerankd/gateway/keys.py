"""API keys for the gateway: create (shown once), list, revoke, verify.

Why SHA-256 and not bcrypt/argon2: our keys are 256-bit random tokens, not human passwords, so there
is nothing to brute-force and a slow hash would only add latency to every request. A fast hash still
means a leaked table yields no usable key, and the stored digest is compared in constant time.
"""

from __future__ import annotations

import builtins
import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker

from rerankd.gateway.db import ApiKey, utcnow
from rerankd.gateway.key_ranges import LIMIT_RANGE, PRIORITY_RANGE

__all__ = ["KEY_PREFIX", "LIMIT_RANGE", "PRIORITY_RANGE", "ApiKeyRecord", "KeyStore", "hash_key"]

KEY_PREFIX = "rk-"
_DISPLAY_PREFIX_LEN = 8


def hash_key(plaintext: str) -> str:
    """The stored form of a key: SHA-256 hex of its UTF-8 bytes (see the module docstring for why)."""
    return hashlib.sha256(plaintext.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class ApiKeyRecord:
    """What callers may know about a key. The hash stays inside :class:`KeyStore` on purpose."""

    id: str
    name: str
    key_prefix: str
    rpm: int | None
    tpm: int | None
    is_admin: bool
    created_at: datetime
    revoked_at: datetime | None
    priority: int | None = None  # default request priority (lower is served earlier); None: none

    @property
    def revoked(self) -> bool:
        """True once the key was revoked; a revoked key never verifies again."""
        return self.revoked_at is not None

    @classmethod
    def _from_row(cls, row: ApiKey) -> ApiKeyRecord:
        return cls(id=row.id, name=row.name, key_prefix=row.key_prefix, rpm=row.rpm, tpm=row.tpm,
                   is_admin=row.is_admin, created_at=row.created_at, revoked_at=row.revoked_at,
                   priority=row.priority)


class KeyStore:
    """Keys in the gateway database (table ``api_keys``); the schema must exist (``db.init_schema``).

    ``verify`` reads the database on each call; the auth layer may cache results briefly, accepting that
    a revocation then takes up to that long to bite.
    """

    def __init__(self, engine: AsyncEngine) -> None:
        self._sessions = async_sessionmaker(engine, expire_on_commit=False)

    async def create(self, name: str, rpm: int | None = None, tpm: int | None = None,
                     is_admin: bool = False, priority: int | None = None) -> tuple[ApiKeyRecord, str]:
        """Create a key and return it with its plaintext, which is never stored and cannot be shown again.

        ``priority`` is the default ``priority`` of the key's requests (lower is served earlier; None: the
        replicas' default); ValueError names the range of a value that does not fit.
        """
        name = name.strip()
        if not name:
            raise ValueError("an API key needs a non-empty name")
        for label, limit in (("rpm", rpm), ("tpm", tpm)):
            if limit is not None and not LIMIT_RANGE[0] <= limit <= LIMIT_RANGE[1]:
                raise ValueError(f"{label} must be an integer from {LIMIT_RANGE[0]} to {LIMIT_RANGE[1]}, or "
                                 f"unset (unlimited); got {limit}")
        if priority is not None and not PRIORITY_RANGE[0] <= priority <= PRIORITY_RANGE[1]:
            raise ValueError(f"priority must be an integer from {PRIORITY_RANGE[0]} to {PRIORITY_RANGE[1]} "
                             f"(lower is served earlier), or unset; got {priority}")
        plaintext = KEY_PREFIX + secrets.token_urlsafe(32)
        row = ApiKey(name=name, key_hash=hash_key(plaintext), key_prefix=plaintext[:_DISPLAY_PREFIX_LEN],
                     rpm=rpm, tpm=tpm, is_admin=is_admin, priority=priority, created_at=utcnow())
        async with self._sessions() as session:
            session.add(row)
            try:
                await session.commit()
            except IntegrityError:
                # The key hash cannot realistically collide, so a violation here means the name is taken.
                await session.rollback()
                message = f"an API key named {name!r} already exists; pick another name"
                raise ValueError(message) from None
        return ApiKeyRecord._from_row(row), plaintext

    async def list(self) -> builtins.list[ApiKeyRecord]:
        """Every key, revoked ones included (their ``revoked_at`` is set), oldest first."""
        async with self._sessions() as session:
            rows = await session.scalars(select(ApiKey).order_by(ApiKey.created_at, ApiKey.name))
            return [ApiKeyRecord._from_row(row) for row in rows]

    async def get(self, name_or_id: str) -> ApiKeyRecord | None:
        """The key with this name or id (revoked or not); None when there is none."""
        async with self._sessions() as session:
            row = await session.scalar(select(ApiKey).where(or_(ApiKey.id == name_or_id, ApiKey.name == name_or_id)))
        return None if row is None else ApiKeyRecord._from_row(row)

    async def revoke(self, name_or_id: str) -> bool:
        """Revoke the key with this name or id. False when no active key matched (unknown or already revoked)."""
        statement = (
            update(ApiKey)
            .where(or_(ApiKey.id == name_or_id, ApiKey.name == name_or_id), ApiKey.revoked_at.is_(None))
            .values(revoked_at=utcnow())
        )
        async with self._sessions() as session:
            result = await session.execute(statement)
            await session.commit()
            return bool(getattr(result, "rowcount", 0))  # a CursorResult for UPDATE (Result's type lacks it)

    async def verify(self, plaintext: str) -> ApiKeyRecord | None:
        """The key's record when ``plaintext`` is a known, unrevoked key; otherwise None."""
        if not isinstance(plaintext, str) or not plaintext.startswith(KEY_PREFIX):
            return None
        digest = hash_key(plaintext)
        async with self._sessions() as session:
            row = await session.scalar(select(ApiKey).where(ApiKey.key_hash == digest))
        if row is None or not hmac.compare_digest(row.key_hash, digest):
            return None
        if row.revoked_at is not None:
            return None
        return ApiKeyRecord._from_row(row)
