"""The composition root: the gateway's long-lived components, built at startup and closed in order.

Why "components" (this was ``state.py``): nothing here is request state; it is the set of parts the
routes are handed, built from :class:`GatewaySettings` in one place, and the only module that knows how
they connect. The app's lifespan opens them and hands them to the routes as lifespan state (see
:func:`rerankd.gateway.dependencies.components_of`); tests and ``rerankd up`` get the same wiring.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass

import aiohttp
from sqlalchemy.ext.asyncio import AsyncEngine

from rerankd.admission import AdmissionLimits
from rerankd.gateway.admit import Admission
from rerankd.gateway.audit import AuditLog
from rerankd.gateway.authenticate import Authenticator
from rerankd.gateway.breaker import BreakerState, CircuitBreaker
from rerankd.gateway.charge import UsageCharger
from rerankd.gateway.db import create_engine_for, init_schema
from rerankd.gateway.distribute import Distributor
from rerankd.gateway.forward import Forwarder, RetryBudget
from rerankd.gateway.jwt_auth import JwtSettings, JwtVerifier
from rerankd.gateway.keys import KeyStore
from rerankd.gateway.ledger import UsageLedger
from rerankd.gateway.model_table import UNNAMED, ModelTable, PoolSettings
from rerankd.gateway.pipeline import ScoringPipeline
from rerankd.gateway.pool import Upstream, UpstreamPool
from rerankd.gateway.pools import ModelPool, PoolSet
from rerankd.gateway.ratelimit import RateLimiter
from rerankd.gateway.rollout import Rollout
from rerankd.gateway.settings import GatewaySettings
from rerankd.gateway.shadow import ShadowScorer
from rerankd.observability.gateway_metrics import GatewayMetrics, GatewayStateCollector

__all__ = ["GatewayComponents", "open_components"]

log = logging.getLogger(__name__)


@dataclass
class GatewayComponents:
    """Everything the routes use, connected. Built by :func:`open_components`, released by :meth:`close`."""

    settings: GatewaySettings
    metrics: GatewayMetrics
    engine: AsyncEngine
    keys: KeyStore
    ledger: UsageLedger
    limiter: RateLimiter
    auth: Authenticator
    pools: PoolSet  # every model's replicas, and the model table
    client: aiohttp.ClientSession
    pipeline: ScoringPipeline
    audit: AuditLog
    mirrored: GatewayStateCollector
    admission: AdmissionLimits  # the bounds of a scoring body, checked before validation
    jwt: JwtVerifier | None = None
    shadow: ShadowScorer | None = None  # the rollouts' shadow requests in flight

    async def close(self) -> None:
        """Stop health checks, flush the ledger (bounded), release connections. Never raises."""
        if self.shadow is not None:
            await self.shadow.close()
        await self.pools.close()
        await self.ledger.close(timeout=max(5.0, self.settings.drain_seconds))  # logs the real reason itself
        self.metrics.unmirror(self.mirrored)
        for closer in (self.limiter.close, self.client.close, self.engine.dispose):
            with contextlib.suppress(Exception):
                await closer()
        if self.jwt is not None:
            with contextlib.suppress(Exception):
                await self.jwt.aclose()


async def open_components(settings: GatewaySettings, metrics: GatewayMetrics) -> GatewayComponents:
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
    # aiohttp rather than httpx on this hot path: about half the CPU per proxied request (bench/gateway_overhead.py).
    # Generous pool: every in-flight client request holds at most one upstream connection at a time.
    client = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=2000, limit_per_host=0, ttl_dns_cache=10),
                                   trust_env=False, auto_decompress=True, skip_auto_headers=("User-Agent",))
    configured = list(settings.pools)
    if settings.upstreams:  # the --upstream pool of earlier versions: unnamed, the default route
        configured.insert(0, PoolSettings(name="unnamed", task="rerank", upstreams=settings.upstreams,
                                               served_model=None))
    pools = [_model_pool(settings, metrics, client, spec, unnamed=bool(settings.upstreams) and i == 0)
             for i, spec in enumerate(configured)]
    by_name = {p.name: p for p in pools if p.named}
    pool_set = PoolSet(pools, ModelTable(pools, settings.model_aliases, default_model=settings.default_model,
                                         strict=settings.strict_model_names),
                       rollouts=[Rollout.build(r, by_name) for r in settings.rollouts], metrics=metrics)
    shadow = ShadowScorer(metrics)
    pipeline = ScoringPipeline(
        Admission(limiter, metrics, max_documents=settings.max_documents,
                  upstream_max_model_len=settings.upstream_max_model_len),
        pool_set, UsageCharger(limiter, ledger, metrics), shadow=shadow)
    await pool_set.start()
    return GatewayComponents(settings=settings, metrics=metrics, engine=engine, keys=keys, ledger=ledger,
                             limiter=limiter, auth=auth, pools=pool_set, client=client, pipeline=pipeline,
                             audit=AuditLog(engine), mirrored=metrics.mirror(pool_set, ledger, limiter),
                             admission=AdmissionLimits(max_documents=settings.max_documents,
                                                       max_request_chars=settings.max_request_chars),
                             jwt=jwt, shadow=shadow)


def _model_pool(settings: GatewaySettings, metrics: GatewayMetrics, client: aiohttp.ClientSession,
                spec: PoolSettings, *, unnamed: bool) -> ModelPool:
    """One pool's replicas (health checks, breakers), its forwarder (its own retry budget) and distributor."""
    replicas = UpstreamPool(
        spec.upstreams, health_interval=settings.health_interval, health_timeout=settings.health_timeout,
        ready_path=settings.upstream_ready_path,
        breaker_factory=lambda: CircuitBreaker(failure_threshold=settings.breaker_failures,
                                               error_ratio=settings.breaker_error_ratio,
                                               open_seconds=settings.breaker_open_seconds),
        on_new_upstream=lambda upstream: _watch_breaker(upstream, metrics),
        on_gone_upstream=lambda upstream: metrics.forget_upstream(upstream.url),
    )
    forwarder = Forwarder(replicas, client, metrics, attempt_timeout=settings.attempt_timeout,
                          total_timeout=settings.total_timeout, max_attempts=settings.max_attempts,
                          budget=RetryBudget(settings.retry_budget_ratio, settings.retry_budget_min_per_second),
                          upstream_api_key=settings.upstream_api_key,
                          max_answer_bytes=settings.max_upstream_answer_bytes)
    return ModelPool(name=UNNAMED if unnamed else spec.name, task=spec.task, served_model=spec.served_model,
                     replicas=replicas, forwarder=forwarder,
                     distributor=Distributor(forwarder, replicas, metrics, split_threshold=settings.split_threshold))


def _watch_breaker(upstream: Upstream, metrics: GatewayMetrics) -> None:
    """Count and log each breaker transition of a replica as it joins the pool (its state is scraped)."""
    def on_transition(old: BreakerState, new: BreakerState) -> None:
        metrics.breaker_transitions_total.labels(upstream=upstream.url, to=new.value).inc()
        level = logging.INFO if new is BreakerState.CLOSED else logging.WARNING
        log.log(level, "circuit breaker of %s: %s -> %s", upstream.url, old.value, new.value)

    upstream.breaker.on_transition = on_transition
    metrics.watch_upstream(upstream.url)
