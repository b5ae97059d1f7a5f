"""The audit trail: administrative actions (keys created, revoked), written before the admin's answer.

Why written at once and not buffered like usage rows: admin actions are rare, and an admin who was
told "revoked" must find the revocation in ``/admin/audit`` even if the gateway dies right after.
Each event is also logged (logger ``rerankd.gateway.audit``) so log pipelines see it without the database.
"""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from rerankd.gateway.db import AuditEvent, record_audit

__all__ = ["AuditLog"]

log = logging.getLogger(__name__)

_FIELDS = ("created_at", "actor", "action", "target", "request_id", "client")


class AuditLog:
    """Writes and reads ``audit_events``; ``actor`` is a credential's name, never the credential."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def record(self, actor: str, action: str, target: str | None, *, request_id: str | None = None,
                     client: str | None = None) -> None:
        """Commit one event now, then log it."""
        await record_audit(self._engine, actor, action, target, request_id, client)
        log.info("audit", extra={"actor": actor, "action": action, "target": target, "request_id": request_id})

    async def recent(self, limit: int) -> list[dict[str, Any]]:
        """The ``limit`` most recent events, newest first."""
        table = AuditEvent.__table__
        statement = select(table).order_by(table.c.id.desc()).limit(limit)
        async with self._engine.connect() as conn:
            rows = (await conn.execute(statement)).mappings().all()
        return [{k: row[k] for k in _FIELDS} for row in rows]
