"""KeyStore against real databases: SQLite in a temp file and the PostgreSQL test server."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from integration.gateway_databases import DATABASE_KINDS, open_database
from rerankd.gateway.db import ApiKey, create_engine_for
from rerankd.gateway.keys import ApiKeyRecord, KeyStore


@pytest.fixture(params=DATABASE_KINDS)
async def engine(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    """A fresh gateway schema (the ledger tests' own): a new SQLite file, or a PostgreSQL schema of this test's."""
    async with open_database(request.param, tmp_path) as database:
        yield database.open()


async def test_key_is_shown_once_and_only_its_hash_is_stored(engine: AsyncEngine) -> None:
    store = KeyStore(engine)
    record, plaintext = await store.create("alice", rpm=60, tpm=10_000)
    assert plaintext.startswith("rk-") and len(plaintext) > 40
    assert isinstance(record, ApiKeyRecord)
    assert record.name == "alice" and record.rpm == 60 and record.tpm == 10_000 and not record.is_admin
    assert record.key_prefix == plaintext[:8] and not record.revoked
    assert not hasattr(record, "key_hash")

    async with engine.connect() as conn:
        rows = (await conn.execute(select(ApiKey.__table__))).mappings().all()
    assert len(rows) == 1
    stored = " ".join(str(value) for value in rows[0].values())
    assert plaintext not in stored
    assert rows[0]["key_hash"] == hashlib.sha256(plaintext.encode()).hexdigest()

    listed = await store.list()
    assert [key.name for key in listed] == ["alice"]
    assert listed[0].created_at.tzinfo is not None


async def test_verify_accepts_the_key_and_rejects_wrong_ones(engine: AsyncEngine) -> None:
    store = KeyStore(engine)
    record, plaintext = await store.create("svc", is_admin=True)
    verified = await store.verify(plaintext)
    assert verified is not None and verified.id == record.id and verified.is_admin
    assert await store.verify(plaintext[:-1] + ("A" if plaintext[-1] != "A" else "B")) is None
    assert await store.verify("rk-" + "x" * 43) is None
    assert await store.verify("") is None
    assert await store.verify("not-a-key") is None


async def test_revoked_key_no_longer_verifies(engine: AsyncEngine) -> None:
    store = KeyStore(engine)
    first, first_key = await store.create("one")
    _, second_key = await store.create("two")
    assert await store.revoke("one") is True
    assert await store.revoke("one") is False  # already revoked
    assert await store.revoke("no-such-key") is False
    assert await store.verify(first_key) is None
    assert await store.verify(second_key) is not None
    second = await store.verify(second_key)
    assert second is not None and await store.revoke(second.id) is True  # by id works too
    assert await store.verify(second_key) is None
    by_name = {key.name: key for key in await store.list()}
    assert by_name["one"].revoked and by_name["one"].id == first.id and by_name["two"].revoked


async def test_duplicate_name_is_a_clear_error(engine: AsyncEngine) -> None:
    store = KeyStore(engine)
    await store.create("team-a")
    with pytest.raises(ValueError, match=r"team-a.*already exists"):
        await store.create("team-a")
    assert [key.name for key in await store.list()] == ["team-a"]
    with pytest.raises(ValueError, match="non-empty"):
        await store.create("  ")
    with pytest.raises(ValueError, match="rpm"):
        await store.create("team-b", rpm=0)


@pytest.mark.parametrize(("url", "driver"), [
    ("sqlite:///tmp/x.db", "sqlite+aiosqlite"),
    ("sqlite+aiosqlite:///tmp/x.db", "sqlite+aiosqlite"),
    ("postgresql://u@h/db", "postgresql+asyncpg"),
    ("postgres://u@h/db", "postgresql+asyncpg"),
    ("postgresql+asyncpg://u@h/db", "postgresql+asyncpg"),
])
async def test_create_engine_for_uses_async_drivers(url: str, driver: str) -> None:
    engine = create_engine_for(url)
    try:
        assert engine.url.drivername == driver
    finally:
        await engine.dispose()


def test_create_engine_for_refuses_sync_drivers() -> None:
    with pytest.raises(ValueError, match="unsupported database URL"):
        create_engine_for("mysql://u@h/db")
