"""Admin and usage routes: keys, upstream state, usage for billing, the audit trail.

``/admin/*`` needs an admin credential (the bootstrap ``--admin-key``, an API key created with
``--admin``, or a JWT carrying the admin claim); ``/v1/usage`` shows any caller its own usage.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select

from rerankd.errors import ConflictError, ModelNotFoundError
from rerankd.gateway.auth import Identity
from rerankd.gateway.db import AuditEvent
from rerankd.gateway.keys import ApiKeyRecord
from rerankd.gateway.proxy import ScoringProxy
from rerankd.gateway.state import GatewayState
from rerankd.http.middleware import request_id_of

__all__ = ["admin_router"]


class KeyCreate(BaseModel):
    """``POST /admin/keys``: a new key; its plaintext is in the answer and nowhere else, ever."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(..., min_length=1, max_length=128, description="Unique name; shown in logs and metrics.")
    rpm: int | None = Field(None, ge=1, description="Requests per minute (default unlimited).")
    tpm: int | None = Field(None, ge=1, description="Tokens per minute (default unlimited).")
    admin: bool = Field(False, description="May call /admin/*.")


class KeyInfo(BaseModel):
    id: str
    name: str
    key_prefix: str
    rpm: int | None
    tpm: int | None
    admin: bool
    created_at: datetime
    revoked_at: datetime | None


class CreatedKey(KeyInfo):
    key: str = Field(..., description="The API key. Store it now: it cannot be shown again.")


class UsageDay(BaseModel):
    day: str = Field(..., description="UTC day, YYYY-MM-DD")
    requests: int = Field(..., description="Scoring requests answered, errors included")
    failed: int = Field(..., description="Of those, answered with an error status")
    documents: int = Field(..., description="Documents reranked in successful requests")
    tokens: int = Field(..., description="Prompt tokens of successful requests")


class UsageReport(BaseModel):
    key: str
    usage: list[UsageDay]


def _info(record: ApiKeyRecord) -> dict[str, Any]:
    return {"id": record.id, "name": record.name, "key_prefix": record.key_prefix, "rpm": record.rpm,
            "tpm": record.tpm, "admin": record.is_admin, "created_at": record.created_at,
            "revoked_at": record.revoked_at}


def admin_router(proxy: ScoringProxy, state_of: Callable[[], GatewayState]) -> APIRouter:
    router = APIRouter()

    async def admin(request: Request) -> Identity:
        identity = await proxy.identify(request)
        state_of().auth.require_admin(identity, request_id=request_id_of(request.scope))
        return identity

    Admin = Depends(admin)
    Caller = Depends(proxy.identify)

    @router.get("/v1/usage", response_model=UsageReport, summary="The caller's own usage per UTC day")
    async def own_usage(identity: Identity = Caller) -> dict[str, Any]:
        return {"key": identity.name, "usage": await state_of().ledger.usage_by_day(identity.key_id)}

    @router.get("/admin/keys", response_model=list[KeyInfo], summary="Every API key (never the key itself)")
    async def list_keys(_: Identity = Admin) -> list[dict[str, Any]]:
        return [_info(r) for r in await state_of().keys.list()]

    @router.post("/admin/keys", response_model=CreatedKey, status_code=201, summary="Create an API key")
    async def create_key(request: Request, body: KeyCreate, identity: Identity = Admin) -> dict[str, Any]:
        state = state_of()
        try:
            record, plaintext = await state.keys.create(body.name, body.rpm, body.tpm, is_admin=body.admin)
        except ValueError as exc:
            raise ConflictError(str(exc), field="name") from None
        await state.audit(identity.name, "key.create", record.name, request_id_of(request.scope), _client(request))
        return {**_info(record), "key": plaintext}

    @router.delete("/admin/keys/{name_or_id}", summary="Revoke an API key (takes effect at once here)")
    async def revoke_key(request: Request, name_or_id: str, identity: Identity = Admin) -> dict[str, str]:
        state = state_of()
        if not await state.keys.revoke(name_or_id):
            raise ModelNotFoundError(f"no active API key named or with id {name_or_id!r}", field="name_or_id")
        state.auth.forget_keys()
        await state.audit(identity.name, "key.revoke", name_or_id, request_id_of(request.scope), _client(request))
        return {"revoked": name_or_id}

    @router.get("/admin/upstreams", summary="Each replica: health, breaker state, requests in flight")
    async def upstreams(_: Identity = Admin) -> list[dict[str, Any]]:
        return state_of().pool.snapshot()

    @router.get("/admin/usage", response_model=list[UsageDay], summary="Usage per UTC day, all keys or one")
    async def all_usage(key_id: str | None = Query(None, description="Only this key id"),
                        _: Identity = Admin) -> list[dict[str, Any]]:
        return await state_of().ledger.usage_by_day(key_id)

    @router.get("/admin/audit", summary="Most recent audit events, newest first")
    async def audit(limit: int = Query(100, ge=1, le=10_000), _: Identity = Admin) -> list[dict[str, Any]]:
        table = AuditEvent.__table__
        statement = select(table).order_by(table.c.id.desc()).limit(limit)
        async with state_of().engine.connect() as conn:
            rows = (await conn.execute(statement)).mappings().all()
        return [{k: row[k] for k in ("created_at", "actor", "action", "target", "request_id", "client")}
                for row in rows]

    return router


def _client(request: Request) -> str | None:
    return request.client.host if request.client else None
