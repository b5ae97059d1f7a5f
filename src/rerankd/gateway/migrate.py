"""Running the gateway's Alembic migrations on its own async engine.

Why programmatic: operators should not have to run a separate ``alembic upgrade`` before every gateway
start; the gateway (and ``rerankd keys``) upgrade the schema themselves, idempotently. On PostgreSQL an
advisory lock serialises gateways that start at the same moment.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import text
from sqlalchemy.exc import OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine

__all__ = ["alembic_config", "current_revision", "head_revision", "upgrade_to_head"]

_SCRIPTS = Path(__file__).with_name("migrations")
_LOCK_ID = 0x7265_7261_6E6B  # "rerank": one advisory lock id for every rerankd gateway


def alembic_config(connection: Any = None, version_table_schema: str | None = None) -> Config:
    """An Alembic config pointing at the packaged migrations (usable with the ``alembic`` command API)."""
    config = Config()
    config.set_main_option("script_location", str(_SCRIPTS))
    config.attributes["connection"] = connection
    config.attributes["version_table_schema"] = version_table_schema
    return config


def head_revision() -> str:
    """The newest revision shipped with this version of rerankd."""
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None
    return head


def translated_schema(engine: AsyncEngine) -> str | None:
    """The schema that ``schema_translate_map`` sends unqualified tables to (tests isolate themselves so)."""
    translate = engine.get_execution_options().get("schema_translate_map") or {}
    return translate.get(None)


async def upgrade_to_head(engine: AsyncEngine) -> None:
    """Apply every migration not yet applied."""
    schema = translated_schema(engine)

    def run(sync_connection: Any) -> None:
        if sync_connection.dialect.name == "postgresql":
            sync_connection.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": _LOCK_ID})
        command.upgrade(alembic_config(sync_connection, schema), "head")

    for attempt in range(1, 6):
        try:
            async with engine.begin() as connection:
                await connection.run_sync(run)
            return
        except OperationalError:
            # SQLite has no advisory lock: two processes starting on one file race to create the tables.
            # The loser's transaction rolls back; by the time it retries the winner is done and it is a no-op.
            if engine.dialect.name != "sqlite" or attempt == 5:
                raise
            await asyncio.sleep(0.2 * attempt)


async def current_revision(engine: AsyncEngine) -> str | None:
    """The revision the database is at (None before the first migration)."""
    schema = translated_schema(engine)
    async with engine.connect() as connection:
        return await connection.run_sync(
            lambda c: MigrationContext.configure(c, opts={"version_table_schema": schema}).get_current_revision()
        )
