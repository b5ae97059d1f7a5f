"""The gateway's long-lived parts, built at startup and closed in order at shutdown.

Why a separate module: the routes only need "the things", not how they are wired; tests and
``rerankd up`` build the same :class:`GatewayState` from :class:`GatewaySettings`.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field

import aiohttp
from sqlalchemy.ext.asyncio import AsyncEngine

from rerankd.gateway.auth import Authenticator
from rerankd.gateway.breaker import BreakerState, CircuitBreaker
from rerankd.gateway.db import create_engine_for, init_schema, record_audit
from rerankd.gateway.forward import Forwarder, RetryBudget
from rerankd.gateway.jwt_auth import JwtSettings, JwtVerifier
from rerankd.gateway.keys import KeyStore
from rerankd.gateway.ledger import UsageLedger
from rerankd.gateway.pool import Upstream, UpstreamPool
from rerankd.gateway.ratelimit import RateLimiter
from rerankd.gateway.settings import GatewaySettings
from rerankd.observability.gateway_metrics import GatewayMetrics

__all__ = ["GatewayState", "open_gateway_state"]

log = logging.getLogger(__name__)


@dataclass
class _Counted:
    """Last value of a component's own counter already added to its Prometheus counter."""

    ledger_written: int = 0
    ledger_failures: int = 0
    storage_errors: int = 0


@dataclass
class GatewayState:
    settings: GatewaySettings
    metrics: GatewayMetrics
    engine: AsyncEngine
    keys: KeyStore
    ledger: UsageLedger
    limiter: RateLimiter
    auth: Authenticator
    pool: UpstreamPool
    client: aiohttp.ClientSession
    forwarder: Forwarder
    jwt: JwtVerifier | None = None
    _counted: _Counted = field(default_factory=_Counted)
    _labelled: set[str] = field(default_factory=set)

    async def close(self) -> None:
        """Stop health checks, flush the ledger (bounded), release connections. Never raises."""
        await self.pool.close()
        unwritten = await self.ledger.close(timeout=max(5.0, self.settings.drain_seconds))
        if unwritten:
            log.error("gateway stopped with %d usage rows unwritten (database unreachable)", unwritten)
        for closer in (self.limiter.close, self.client.close, self.engine.dispose):
            with contextlib.suppress(Exception):
                await closer()
        if self.jwt is not None:
            with contextlib.suppress(Exception):
                await self.jwt.aclose()

    async def audit(self, actor: str, action: str, target: str | None, request_id: str | None,
                    client: str | None) -> None:
        """Write one audit event now and log it."""
        await record_audit(self.engine, actor, action, target, request_id, client)
        log.info("audit", extra={"actor": actor, "action": action, "target": target, "request_id": request_id})

    def refresh_metrics(self) -> None:
        """Bring gauges and counters that mirror component state up to date (called on each scrape)."""
        m = self.metrics
        upstreams = self.pool.upstreams
        m.upstreams.set(len(upstreams))
        m.healthy_upstreams.set(self.pool.available_count())
        current = {u.url for u in upstreams}
        for url in self._labelled - current:  # replicas gone from DNS: drop their series
            for gauge in (m.upstream_up, m.upstream_inflight):
                with contextlib.suppress(KeyError):
                    gauge.remove(url)
        self._labelled = current
        for u in upstreams:
            m.upstream_up.labels(upstream=u.url).set(1 if u.healthy else 0)
            m.upstream_inflight.labels(upstream=u.url).set(u.outstanding)
            m.set_breaker_state(u.url, u.breaker.state.value)
        m.ledger_pending_rows.set(self.ledger.pending())
        m.ledger_lag_seconds.set(self.ledger.lag_seconds())
        c = self._counted
        m.ledger_rows_total.inc(self.ledger.written - c.ledger_written)
        m.ledger_write_errors_total.inc(self.ledger.flush_failures - c.ledger_failures)
        m.ratelimit_storage_errors_total.inc(self.limiter.storage_errors - c.storage_errors)
        c.ledger_written, c.ledger_failures = self.ledger.written, self.ledger.flush_failures
        c.storage_errors = self.limiter.storage_errors


async def open_gateway_state(settings: GatewaySettings, metrics: GatewayMetrics) -> GatewayState:
    """Connect everything: migrate the database, start the ledger writer and the health checks."""
    engine = create_engine_for(settings.database_url)
    try:
        await init_schema(engine)
    except Exception:
        await engine.dispose()
        raise
    keys = KeyStore(engine)
    ledger = UsageLedger(engine)
    ledger.start()
    limiter = RateLimiter(settings.redis_url, fail_open=settings.ratelimit_fail_open)
    jwt = None
    if settings.jwt_enabled:
        jwt = JwtVerifier(JwtSettings(
            jwks_url=settings.jwt_jwks_url, secret=settings.jwt_secret, issuer=settings.jwt_issuer,
            audience=settings.jwt_audience, algorithms=tuple(settings.jwt_algorithms),
            max_lifetime_seconds=settings.jwt_max_lifetime, max_token_bytes=settings.jwt_max_token_bytes,
            max_jwks_bytes=settings.jwt_max_jwks_bytes, max_jwks_keys=settings.jwt_max_jwks_keys,
            allow_insecure_jwks_url=settings.jwt_allow_http_jwks))
    auth = Authenticator(keys, metrics, admin_key=settings.admin_key, jwt=jwt, jwt_rpm=settings.jwt_rpm,
                         jwt_tpm=settings.jwt_tpm, key_cache_seconds=settings.key_cache_seconds)

    def watch(upstream: Upstream) -> None:
        def on_transition(old: BreakerState, new: BreakerState) -> None:
            metrics.breaker_transitions_total.labels(upstream=upstream.url, to=new.value).inc()
            metrics.set_breaker_state(upstream.url, new.value)
            level = logging.INFO if new is BreakerState.CLOSED else logging.WARNING
            log.log(level, "circuit breaker of %s: %s -> %s", upstream.url, old.value, new.value)

        upstream.breaker.on_transition = on_transition
        metrics.watch_upstream(upstream.url)

    pool = UpstreamPool(
        settings.upstreams, health_interval=settings.health_interval, health_timeout=settings.health_timeout,
        ready_path=settings.upstream_ready_path,
        breaker_factory=lambda: CircuitBreaker(failure_threshold=settings.breaker_failures,
                                               error_ratio=settings.breaker_error_ratio,
                                               open_seconds=settings.breaker_open_seconds),
        on_new_upstream=watch,
    )
    # aiohttp rather than httpx on this hot path: about half the CPU per proxied request (bench/gateway_overhead.py).
    # Generous pool: every in-flight client request holds at most one upstream connection at a time.
    client = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=2000, limit_per_host=0, ttl_dns_cache=10),
                                   trust_env=False, auto_decompress=True, skip_auto_headers=("User-Agent",))
    forwarder = Forwarder(pool, client, metrics, attempt_timeout=settings.attempt_timeout,
                          total_timeout=settings.total_timeout, max_attempts=settings.max_attempts,
                          budget=RetryBudget(settings.retry_budget_ratio, settings.retry_budget_min_per_second),
                          upstream_api_key=settings.upstream_api_key)
    await pool.start()
    return GatewayState(settings=settings, metrics=metrics, engine=engine, keys=keys, ledger=ledger,
                        limiter=limiter, auth=auth, pool=pool, client=client, forwarder=forwarder, jwt=jwt)
