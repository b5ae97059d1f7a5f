"""The gateway database on SQLite and PostgreSQL: the migrations match the tables, and audit events fit."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect, select, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from rerankd.gateway.column_limits import integer_range
from rerankd.gateway.db import ApiKey, AuditEvent, Base, record_audit
from rerankd.gateway.key_ranges import LIMIT_RANGE, PRIORITY_RANGE
from rerankd.gateway.keys import KeyStore
from rerankd.gateway.migrate import alembic_config, current_revision, head_revision, translated_schema

from .gateway_databases import DATABASE_KINDS, Database, open_database


@pytest.fixture(params=DATABASE_KINDS)
async def db(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Database]:
    async with open_database(request.param, tmp_path) as database:
        yield database


async def migrate(engine: AsyncEngine, revision: str, *, down: bool = False) -> None:
    schema = translated_schema(engine)

    def run(connection: Any) -> None:
        config = alembic_config(connection, schema)
        (command.downgrade if down else command.upgrade)(config, revision)

    async with engine.begin() as conn:
        await conn.run_sync(run)


async def schema_differences(engine: AsyncEngine) -> list[Any]:
    """What autogenerate would change to make the database match the ORM tables (empty when they agree)."""
    schema = translated_schema(engine)

    def compare(connection: Any) -> list[Any]:
        if schema is not None:
            connection.execute(text(f'SET search_path TO "{schema}"'))
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        return [d for d in compare_metadata(context, Base.metadata)
                if not (isinstance(d, tuple) and d[0] == "remove_table" and d[1].name == "alembic_version")]

    async with engine.connect() as conn:
        return await conn.run_sync(compare)


async def tables(engine: AsyncEngine) -> set[str]:
    schema = translated_schema(engine)
    async with engine.connect() as conn:
        return set(await conn.run_sync(lambda c: inspect(c).get_table_names(schema=schema)))


async def test_migrations_build_exactly_the_tables_the_code_uses(db: Database) -> None:
    engine = db.open()
    assert await current_revision(engine) == head_revision() == "0003"
    assert await schema_differences(engine) == []


async def test_the_dead_letter_migration_goes_down_and_up_again(db: Database) -> None:
    engine = db.open()
    async with engine.begin() as conn:
        await conn.execute(text(
            f"INSERT INTO {db.table('usage_dead_letters')} (created_at, request_id, reason, row) "
            "VALUES ('2026-03-01 00:00:00', 'r', 'why', '{}')"))
    await migrate(engine, "0001", down=True)
    assert "usage_dead_letters" not in await tables(engine)
    assert {"usage_records", "audit_events", "api_keys"} <= await tables(engine)
    await migrate(engine, "head")
    assert "usage_dead_letters" in await tables(engine)
    assert await current_revision(engine) == "0003" and await schema_differences(engine) == []


async def test_the_key_priority_migration_keeps_the_keys_and_goes_down_and_up_again(db: Database) -> None:
    engine = db.open()
    await migrate(engine, "0002", down=True)  # a database from before key priorities, holding a key
    async with engine.begin() as conn:
        await conn.execute(text(
            f"INSERT INTO {db.table('api_keys')} (id, name, key_hash, key_prefix, rpm, tpm, is_admin, created_at) "
            "VALUES ('k1', 'old-key', 'h', 'rk-x', 60, NULL, false, '2026-03-01 00:00:00')"))
    await migrate(engine, "head")
    assert await current_revision(engine) == "0003" and await schema_differences(engine) == []
    async with engine.connect() as conn:
        rows = (await conn.execute(text(f"SELECT name, rpm, priority FROM {db.table('api_keys')}"))).all()
    assert [tuple(r) for r in rows] == [("old-key", 60, None)]
    record, _ = await KeyStore(engine).create("new-key", priority=5)
    assert record.priority == 5 and (await KeyStore(engine).get("new-key")).priority == 5  # type: ignore[union-attr]


async def test_key_values_past_the_columns_range_are_refused_naming_it_on_both_databases(db: Database) -> None:
    """PostgreSQL's INTEGER refuses 2**31 (a driver error, once a traceback); SQLite would store it. The key
    store refuses it first on both, with the range, and stores nothing."""
    engine = db.open()
    store = KeyStore(engine)
    for fields, named in (({"priority": 2**31}, "priority must be an integer from -2147483648 to 2147483647"),
                          ({"priority": -(2**31) - 1}, "priority must be an integer from -2147483648"),
                          ({"rpm": 2**31}, "rpm must be an integer from 1 to 2147483647"),
                          ({"tpm": 0}, "tpm must be an integer from 1 to 2147483647")):
        with pytest.raises(ValueError, match=named):
            await store.create("too-big", **fields)  # type: ignore[arg-type]
    assert await store.list() == []
    for bound in PRIORITY_RANGE:
        record, _ = await store.create(f"edge{bound}", priority=bound, rpm=LIMIT_RANGE[1])
        assert (await store.get(record.id)).priority == bound  # type: ignore[union-attr]
    if db.kind == "postgres":  # what the check spares the caller: the database's own refusal
        with pytest.raises(DBAPIError):
            async with engine.begin() as conn:
                await conn.execute(text(
                    f"UPDATE {db.table('api_keys')} SET priority = 2147483648 WHERE name = 'edge2147483647'"))


def test_the_key_ranges_are_the_columns_ranges() -> None:
    assert integer_range(ApiKey.__table__.c.priority) == PRIORITY_RANGE
    assert LIMIT_RANGE[1] == integer_range(ApiKey.__table__.c.rpm)[1] == integer_range(ApiKey.__table__.c.tpm)[1]


async def test_audit_values_are_cut_to_their_columns(db: Database) -> None:
    """A client's long request id or a long key name must not fail the audit insert (and the admin action
    with it) on PostgreSQL, nor be stored past its column on SQLite, which does not enforce lengths."""
    engine = db.open()
    await record_audit(engine, actor="a" * 300, action="key.create" + "x" * 100, target="t" * 300,
                       request_id="r" * 300, client="c\x00" * 200)
    async with engine.connect() as conn:
        row = (await conn.execute(select(AuditEvent.__table__))).mappings().one()
    assert row["actor"] == "a" * 128 and row["target"] == "t" * 256 and row["request_id"] == "r" * 128
    assert row["action"].startswith("key.create") and len(row["action"]) == 64
    assert len(row["client"]) == 128 and "\x00" not in row["client"]
