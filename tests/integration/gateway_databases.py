"""The gateway's test databases: a fresh SQLite file or a fresh PostgreSQL schema, and a way to take one down.

Shared by the ledger and database tests (``db`` fixtures there build on :func:`open_database`).
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from rerankd.gateway.db import create_engine_for, init_schema

PG_URL = "postgresql://postgres@127.0.0.1:5432/test"
DATABASE_KINDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


@dataclass
class Database:
    """Opens engines on one test database, as many times as a test wants (to simulate restarts)."""

    kind: str
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

    def table(self, name: str) -> str:
        """``name`` as raw SQL must spell it (text() skips the schema translation)."""
        return name if self.schema is None else f'"{self.schema}".{name}'

    async def dispose_all(self) -> None:
        for engine in self._opened:
            await engine.dispose()

    @contextlib.asynccontextmanager
    async def outage(self) -> AsyncIterator[tuple[AsyncEngine, Callable[[], Awaitable[None]],
                                                  Callable[[], Awaitable[None]]]]:
        """An engine on this database and ``(engine, go_down, come_back)``: a real outage of that engine.

        SQLite: another connection holds the write lock (``BEGIN IMMEDIATE``), so writes fail with "database
        is locked" (the engine waits 50 ms for it, not the 5 s it waits in production). PostgreSQL: the engine
        talks through a TCP relay; going down closes the relay's listener and every connection through it.
        """
        if self.kind == "sqlite":
            engine = self.open()
            event.listen(engine.sync_engine, "connect", _short_busy_timeout)
            holder: list[sqlite3.Connection] = []

            async def lock() -> None:
                blocker = sqlite3.connect(make_url(self.url).database or "", isolation_level=None)
                blocker.execute("BEGIN IMMEDIATE")
                holder.append(blocker)

            async def unlock() -> None:
                blocker = holder.pop()
                blocker.execute("ROLLBACK")
                blocker.close()

            try:
                yield engine, lock, unlock
            finally:
                for blocker in holder:
                    blocker.close()
            return
        relay = TcpRelay("127.0.0.1", 5432)
        await relay.open()
        try:
            engine = self.open(PG_URL.replace(":5432/", f":{relay.port}/"))
            yield engine, relay.cut, relay.open
        finally:
            await relay.cut()


def _short_busy_timeout(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA busy_timeout=50")
    finally:
        cursor.close()


class TcpRelay:
    """A TCP relay on 127.0.0.1 to ``host:port`` that can be cut (listener and live connections) and reopened
    on the same port: the database vanishing from the network and coming back."""

    def __init__(self, host: str, port: int) -> None:
        self._target = (host, port)
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def open(self) -> None:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def cut(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()
        if server is not None:
            await server.wait_closed()

    async def _relay(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        try:
            server_reader, server_writer = await asyncio.open_connection(*self._target)
        except OSError:
            client_writer.transport.abort()
            return
        self._writers.update((client_writer, server_writer))

        async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError, asyncio.IncompleteReadError):
                while data := await reader.read(65536):
                    writer.write(data)
                    await writer.drain()
            writer.transport.abort()

        await asyncio.gather(pipe(client_reader, server_writer), pipe(server_reader, client_writer))
        self._writers.difference_update((client_writer, server_writer))


@contextlib.asynccontextmanager
async def open_database(kind: str, tmp_path: Path) -> AsyncIterator[Database]:
    """A fresh gateway schema at the newest migration: a new SQLite file, or a PostgreSQL schema of its own."""
    if kind == "sqlite":
        # SQLite cannot create a file in a directory that does not exist (even as root, unlike chmod).
        database = Database(kind, f"sqlite:///{tmp_path / 'ledger.db'}", f"sqlite:///{tmp_path / 'missing' / 'x.db'}")
        try:
            await init_schema(database.open())
            yield database
        finally:
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
    database = Database(kind, PG_URL, "postgresql://postgres@127.0.0.1:1/test", schema=schema)
    try:
        await init_schema(database.open())
        yield database
    finally:
        await database.dispose_all()
        async with admin.begin() as conn:
            await conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        await admin.dispose()
