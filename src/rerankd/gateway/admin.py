"""Admin and usage routes: keys, upstream state, usage for billing, the audit trail.

``/admin/*`` needs an admin credential (the bootstrap ``--admin-key``, an API key created with
``--admin``, or a JWT carrying the admin claim); ``/v1/usage`` shows any caller its own usage.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from rerankd.errors import ConflictError, KeyNotFoundError
from rerankd.gateway.dependencies import Admin, Caller, Components
from rerankd.gateway.key_ranges import LIMIT_RANGE, PRIORITY_RANGE
from rerankd.gateway.keys import ApiKeyRecord
from rerankd.http.middleware import request_id_of

__all__ = ["admin_router"]


class KeyCreate(BaseModel):
    """``POST /admin/keys``: a new key; its plaintext is in the answer and nowhere else, ever."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(..., min_length=1, max_length=128, description="Unique name; shown in logs and metrics.")
    rpm: int | None = Field(None, ge=LIMIT_RANGE[0], le=LIMIT_RANGE[1],
                            description="Requests per minute (default unlimited).")
    tpm: int | None = Field(None, ge=LIMIT_RANGE[0], le=LIMIT_RANGE[1],
                            description="Tokens per minute (default unlimited).")
    admin: bool = Field(False, description="May call /admin/*.")
    priority: int | None = Field(
        None, ge=PRIORITY_RANGE[0], le=PRIORITY_RANGE[1],
        description="Default `priority` of the key's requests (lower is served earlier); a request may ask for a "
                    "higher number, never a lower one. Default: none (the replicas' default, 0).")


class KeyInfo(BaseModel):
    id: str
    name: str
    key_prefix: str
    rpm: int | None
    tpm: int | None
    admin: bool
    priority: int | None
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
            "tpm": record.tpm, "admin": record.is_admin, "priority": record.priority, "created_at": record.created_at,
            "revoked_at": record.revoked_at}


def admin_router() -> APIRouter:
    router = APIRouter()

    @router.get("/v1/usage", response_model=UsageReport, summary="The caller's own usage per UTC day")
    async def own_usage(identity: Caller, components: Components) -> dict[str, Any]:
        return {"key": identity.name, "usage": await components.ledger.usage_by_day(identity.key_id)}

    @router.get("/admin/keys", response_model=list[KeyInfo], summary="Every API key (never the key itself)")
    async def list_keys(_: Admin, components: Components) -> list[dict[str, Any]]:
        return [_info(r) for r in await components.keys.list()]

    @router.post("/admin/keys", response_model=CreatedKey, status_code=201, summary="Create an API key")
    async def create_key(request: Request, body: KeyCreate, identity: Admin, components: Components) -> dict[str, Any]:
        try:
            record, plaintext = await components.keys.create(body.name, body.rpm, body.tpm, is_admin=body.admin,
                                                             priority=body.priority)
        except ValueError as exc:
            raise ConflictError(str(exc), field="name") from None
        await components.audit.record(identity.name, "key.create", record.name, request_id=request_id_of(request.scope),
                                      client=_client(request))
        return {**_info(record), "key": plaintext}

    @router.get("/admin/keys/{name_or_id}", response_model=KeyInfo, summary="One API key (never the key itself)")
    async def get_key(name_or_id: str, _: Admin, components: Components) -> dict[str, Any]:
        record = await components.keys.get(name_or_id)
        if record is None:
            raise _unknown_key(name_or_id)
        return _info(record)

    @router.delete("/admin/keys/{name_or_id}", summary="Revoke an API key (takes effect at once here)")
    async def revoke_key(request: Request, name_or_id: str, identity: Admin, components: Components) -> dict[str, str]:
        if not await components.keys.revoke(name_or_id):
            raise _unknown_key(name_or_id, active=True)
        components.auth.forget_keys()
        await components.audit.record(identity.name, "key.revoke", name_or_id, request_id=request_id_of(request.scope),
                                      client=_client(request))
        return {"revoked": name_or_id}

    @router.get("/admin/upstreams", summary="Each replica: its pool, health, breaker state, requests in flight")
    async def upstreams(_: Admin, components: Components) -> list[dict[str, Any]]:
        return components.pools.snapshot()

    @router.get("/admin/usage", response_model=list[UsageDay], summary="Usage per UTC day, all keys or one")
    async def all_usage(_: Admin, components: Components,
                        key_id: str | None = Query(None, description="Only this key id")) -> list[dict[str, Any]]:
        return await components.ledger.usage_by_day(key_id)

    @router.get("/admin/audit", summary="Most recent audit events, newest first")
    async def audit(_: Admin, components: Components,
                    limit: int = Query(100, ge=1, le=10_000)) -> list[dict[str, Any]]:
        return await components.audit.recent(limit)

    return router


def _unknown_key(name_or_id: str, *, active: bool = False) -> KeyNotFoundError:
    which = "active API key" if active else "API key"
    return KeyNotFoundError(f"no {which} named or with id {name_or_id!r}; `GET /admin/keys` lists them",
                            field="name_or_id")


def _client(request: Request) -> str | None:
    return request.client.host if request.client else None
