"""Step 1 of a gateway request, authenticate: who is calling (API key, JWT or the bootstrap admin key).

Why one place: every route asks the same question ("which identity, with which limits, admin or
not?"), and every refusal must be counted and logged the same way without ever printing the credential.
Verified API keys are cached for ``key_cache_seconds`` so a request does not pay a database round trip;
revoking through ``/admin/keys`` clears the cache at once, revoking from another process takes effect
within that time. :func:`identify` is the HTTP side: it also names the caller for the access log.
"""

from __future__ import annotations

import hmac
import logging
import time
from dataclasses import dataclass

from starlette.requests import Request

from rerankd.errors import ForbiddenError, NotReadyError, UnauthorizedError
from rerankd.gateway.jwt_auth import JwtError, JwtVerifier, is_probably_jwt
from rerankd.gateway.keys import KEY_PREFIX, KeyStore, hash_key
from rerankd.http.middleware import request_id_of
from rerankd.observability import tracing
from rerankd.observability.gateway_metrics import GatewayMetrics

__all__ = ["Authenticator", "Identity", "identify", "identify_admin"]

log = logging.getLogger("rerankd.audit")

_ADMIN_IDENTITY_ID = "admin"


@dataclass(frozen=True)
class Identity:
    """A verified caller. ``key_id`` keys limits and usage; ``name`` is safe to log and label metrics with."""

    key_id: str
    name: str
    kind: str  # "key", "jwt" or "admin"
    is_admin: bool
    rpm: int | None = None
    tpm: int | None = None
    priority: int | None = None  # the key's default request priority (lower is served earlier)


class Authenticator:
    """Turns an ``Authorization`` header into an :class:`Identity`, or raises 401/403."""

    def __init__(self, keys: KeyStore, metrics: GatewayMetrics, *, admin_key: str | None = None,
                 jwt: JwtVerifier | None = None, jwt_rpm: int | None = None, jwt_tpm: int | None = None,
                 key_cache_seconds: float = 5.0) -> None:
        self._keys = keys
        self._metrics = metrics
        self._admin_key = admin_key.encode() if admin_key else None
        self._jwt = jwt
        self._jwt_rpm = jwt_rpm
        self._jwt_tpm = jwt_tpm
        self._cache_seconds = key_cache_seconds
        # Key hash -> (verified at, identity). Fresh for ``key_cache_seconds``; past that, an entry is still
        # used while the database is unreachable, so an outage does not lock out callers the gateway knows.
        self._verified: dict[str, tuple[float, Identity]] = {}

    async def identify(self, authorization: str | None, *, request_id: str = "") -> Identity:
        """The caller's identity; :class:`UnauthorizedError` naming what is wrong otherwise."""
        scheme, _, token = (authorization or "").partition(" ")
        token = token.strip()
        if not authorization:
            raise self._refuse("missing", "missing credentials: send `Authorization: Bearer <API key or JWT>`",
                               request_id)
        if scheme.lower() != "bearer" or not token:
            raise self._refuse("malformed", "malformed Authorization header: expected `Bearer <API key or JWT>`",
                               request_id)
        if self._admin_key is not None and hmac.compare_digest(token.encode(), self._admin_key):
            return Identity(key_id=_ADMIN_IDENTITY_ID, name="admin", kind="admin", is_admin=True)
        if token.startswith(KEY_PREFIX):
            return await self._identify_key(token, request_id)
        if self._jwt is not None and is_probably_jwt(token):
            try:
                who = await self._jwt.verify(token)
            except JwtError as exc:
                raise self._refuse("jwt_invalid", f"invalid token: {exc}", request_id) from None
            return Identity(key_id=who.key_id, name=who.key_id, kind="jwt", is_admin=who.is_admin,
                            rpm=self._jwt_rpm, tpm=self._jwt_tpm)
        if is_probably_jwt(token):
            raise self._refuse("jwt_disabled", "JWT bearer tokens are not enabled on this gateway", request_id)
        raise self._refuse("malformed", f"malformed API key: rerankd keys start with `{KEY_PREFIX}`", request_id)

    def require_admin(self, identity: Identity, *, request_id: str = "") -> None:
        """403 unless the identity carries admin rights."""
        if not identity.is_admin:
            self._metrics.auth_failures_total.labels(reason="not_admin").inc()
            log.warning("admin route refused", extra={"request_id": request_id, "key": identity.name})
            raise ForbiddenError("this credential has no admin rights; /admin/* needs an admin key or token")

    def forget_keys(self) -> None:
        """Drop cached key verifications (after a revocation) so the change applies to the next request."""
        self._verified.clear()

    async def _identify_key(self, token: str, request_id: str) -> Identity:
        digest = hash_key(token)
        now = time.monotonic()
        known = self._verified.get(digest)
        if known is not None and now - known[0] < self._cache_seconds:
            return known[1]
        try:
            record = await self._keys.verify(token)
        except Exception as exc:  # database down: known keys keep working, unknown ones are told to retry
            self._metrics.auth_failures_total.labels(reason="key_store_unavailable").inc()
            log.warning("key store unavailable (%s); %s", type(exc).__name__,
                        "using the last verification" if known else "cannot verify an unseen key",
                        extra={"request_id": request_id})
            if known is not None:
                return known[1]
            raise NotReadyError("cannot verify the API key right now (key store unavailable); retry shortly",
                                retry_after=5) from None
        if record is None:
            self._verified.pop(digest, None)
            raise self._refuse("invalid_key", "invalid or revoked API key", request_id)
        identity = Identity(key_id=record.id, name=record.name, kind="key", is_admin=record.is_admin,
                            rpm=record.rpm, tpm=record.tpm, priority=record.priority)
        if len(self._verified) > 10_000:  # bounded: a flood of distinct valid keys cannot grow it forever
            self._verified.clear()
        self._verified[digest] = (now, identity)
        return identity

    def _refuse(self, reason: str, message: str, request_id: str) -> UnauthorizedError:
        self._metrics.auth_failures_total.labels(reason=reason).inc()
        log.warning("authentication failed", extra={"request_id": request_id, "reason": reason})
        return UnauthorizedError(message)


async def identify(request: Request, auth: Authenticator) -> Identity:
    """The request's caller (401/503 raise); its key *name* goes where the access log reads it. Traced as
    ``gateway.authenticate`` with the credential's kind (never the credential, nor a JWT's subject)."""
    with tracing.span("gateway.authenticate") as current:
        identity = await auth.identify(request.headers.get("authorization"), request_id=request_id_of(request.scope))
        if current is not None:
            current.set_attribute("rerankd.auth.kind", identity.kind)
    request.scope["state"]["key_name"] = identity.name
    return identity


async def identify_admin(request: Request, auth: Authenticator) -> Identity:
    """The caller, who must hold admin rights (403 otherwise)."""
    identity = await identify(request, auth)
    auth.require_admin(identity, request_id=request_id_of(request.scope))
    return identity
