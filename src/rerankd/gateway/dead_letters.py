"""Where usage rows go that the database will not take: the ``usage_dead_letters`` table, else a file.

Why: a row the database refuses must neither block the rows after it nor vanish, since a client was
answered for it. It goes to ``usage_dead_letters`` with the database's reason; if that insert fails too
(the table is missing, the database went read-only), or the database never came back before shutdown,
the row is appended to a JSON-lines file; if even that fails it is logged in full at ERROR. An operator
fixes the cause and re-inserts the rows from the table or the file.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from pathlib import Path

from sqlalchemy import insert
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncEngine

from rerankd.gateway.column_limits import ColumnLimits
from rerankd.gateway.db import UsageDeadLetter, utcnow
from rerankd.gateway.db_errors import failure_reason

__all__ = ["DeadLetters", "default_dead_letter_file"]

logger = logging.getLogger("rerankd.gateway.ledger")  # operators read these lines as the ledger's
_LIMITS = ColumnLimits(UsageDeadLetter.__table__)


def default_dead_letter_file(url: URL) -> Path:
    """Beside a SQLite database file (``ledger.db`` → ``ledger.db.dead-letter.jsonl``), where the gateway
    already writes; for any other database ``rerankd-ledger-dead-letter.jsonl`` in the working directory."""
    if url.get_backend_name() == "sqlite" and url.database and url.database != ":memory:":
        database = Path(url.database)
        return database.with_name(f"{database.name}.dead-letter.jsonl")
    return Path("rerankd-ledger-dead-letter.jsonl")


class DeadLetters:
    """Sets rows aside and counts where they went. ``file`` names the JSON-lines file at each write (so a
    default beside the database follows the engine after a failover)."""

    def __init__(self, file: Callable[[], Path]) -> None:
        self.file = file
        self.refused = 0
        """Rows the database refused, set aside in the table or the file."""
        self.saved_to_file = 0
        """Rows appended to the file (refused rows the table did not take, rows unwritten at shutdown)."""
        self.lost = 0
        """Rows neither the table nor the file took (each logged in full at ERROR)."""

    async def set_aside(self, engine: AsyncEngine, request_id: str, row: str, reason: str) -> None:
        """Store one refused row (``row``: its ASCII JSON) in ``usage_dead_letters``, else in the file."""
        self.refused += 1
        values = _LIMITS.fit({"request_id": request_id, "reason": reason, "row": row,
                              "created_at": utcnow()}).values
        try:
            async with engine.begin() as conn:
                await conn.execute(insert(UsageDeadLetter), [values])
        except Exception as exc:
            path = self.save_to_file([row], reason)
            logger.error("usage ledger: row %s refused by the database (%s); the dead-letter table failed too "
                         "(%s), %s", request_id, reason, failure_reason(exc),
                         f"saved to {path}" if path else "LOST (logged in full above)")
            return
        logger.error("usage ledger: row %s refused by the database (%s); set aside in %s",
                     request_id, reason, UsageDeadLetter.__tablename__)

    def save_to_file(self, rows: list[str], reason: str) -> Path | None:
        """Append rows (ASCII JSON each) to the file, flushed and fsynced; the path, or None if it failed.

        Synchronous on purpose: it runs only for rows no table took, and a row that reached the file must
        be on disk before the ledger forgets it.
        """
        path = self.file()
        when = utcnow().isoformat()
        lines = [json.dumps({"set_aside_at": when, "reason": reason, "row": json.loads(row)}, sort_keys=True)
                 + "\n" for row in rows]
        try:
            with path.open("a", encoding="ascii") as file:
                file.writelines(lines)
                file.flush()
                os.fsync(file.fileno())
        except OSError as exc:
            self.lost += len(rows)
            for line in lines:
                logger.error("usage ledger: row LOST, could not append it to %s (%s): %s", path, exc, line.rstrip())
            return None
        self.saved_to_file += len(rows)
        return path
