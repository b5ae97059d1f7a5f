"""Prometheus metrics of the gateway, under ``rerankd_gateway_``.

One registry per app, like :class:`~rerankd.observability.metrics.ServerMetrics`. Key labels carry the
key's *name* (chosen by the operator at creation), never the key or its hash, and never a JWT subject
(every JWT caller shares one label value: subjects are unbounded and are someone's identity).

Why the per-key series live in a registry of their own (:attr:`GatewayMetrics.tenant_registry`): key
names are tenant names, and ``/metrics`` is open by default (DESIGN.md). :meth:`GatewayMetrics.exposition`
therefore shows them only to a scrape holding ``--metrics-token``; any other scrape sees the same
families summed over keys, one series with ``key="*"`` (:class:`AllKeysCollector`), so rates, alerts
and dashboards keep working without naming anyone. Events are counted where
they happen (:class:`GatewayMetrics`); the components' standing state (replicas up, in flight, breaker
state; ledger backlog and rows written; limiter storage errors) is read from them on each scrape by
:class:`GatewayStateCollector`.
"""

from __future__ import annotations

import contextlib
from collections import defaultdict
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, NamedTuple

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from rerankd.observability.metrics import LATENCY_BUCKETS

if TYPE_CHECKING:  # the gateway's components import this module; typing only, no import cycle
    from rerankd.gateway.ledger import UsageLedger
    from rerankd.gateway.pool import ReplicaSet
    from rerankd.gateway.ratelimit import RateLimiter

__all__ = ["ALL_KEYS_LABEL", "BREAKER_STATES", "DRIFT_BUCKETS", "OVERLAP_BUCKETS", "SHADOW_OUTCOMES",
           "SPEARMAN_BUCKETS", "AllKeysCollector", "GatewayMetrics", "GatewayStateCollector"]

BREAKER_STATES = ("closed", "open", "half_open")
ALL_KEYS_LABEL = "*"  # the `key` of the per-key families summed over keys (what an open /metrics shows)
SHADOW_OUTCOMES = ("compared", "failed", "dropped")
# Rerank scores are probabilities (0-1): a drift of 0.001 is rounding, 0.1 moves a document across a threshold.
DRIFT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
SPEARMAN_BUCKETS = (-0.5, 0.0, 0.5, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0)  # negative bounds: exported without _sum
OVERLAP_BUCKETS = (0.0, 0.2, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)


class GatewayMetrics:
    """The metrics ``rerankd gateway`` counts as things happen (attribute names follow the metric names),
    plus, once :meth:`mirror` is called, its components' state (:class:`GatewayStateCollector`)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.build_info = Info("rerankd_gateway_build", "Gateway version.", registry=r)
        self.requests_total = Counter(
            "rerankd_gateway_requests_total",
            "HTTP requests answered by the gateway, by route, status code and task (rerank, embed; empty for other "
            "routes).", ["route", "status", "task"], registry=r,
        )
        self.request_duration_seconds = Histogram(
            "rerankd_gateway_request_duration_seconds", "Time from request received to response sent, by route "
            "and task.", ["route", "task"], buckets=LATENCY_BUCKETS, registry=r,
        )
        self.inflight_requests = Gauge(
            "rerankd_gateway_inflight_requests", "Requests accepted and not yet answered.", registry=r,
        )
        self.tenant_registry = CollectorRegistry()
        t = self.tenant_registry
        self.key_requests_total = Counter(
            "rerankd_gateway_key_requests_total",
            "Scoring and embedding requests answered, by key name, status code and task (rerank, embed).",
            ["key", "status", "task"], registry=t,
        )
        self.key_tokens_total = Counter(
            "rerankd_gateway_key_tokens_total", "Prompt tokens served, by key name and task.", ["key", "task"],
            registry=t,
        )
        self.key_documents_total = Counter(
            "rerankd_gateway_key_documents_total", "Documents reranked (task rerank) or inputs embedded (task "
            "embed), by key name.", ["key", "task"], registry=t,
        )
        self._all_keys = AllKeysCollector(t)
        r.register(self._all_keys)
        # Upstreams (their current state: up, in flight, breaker, is mirrored by GatewayStateCollector)
        self.upstream_requests_total = Counter(
            "rerankd_gateway_upstream_requests_total",
            "Attempts sent to replicas, by outcome (success, error, timeout, connect_error, rejected, too_large).",
            ["upstream", "outcome"], registry=r,
        )
        self.upstream_duration_seconds = Histogram(
            "rerankd_gateway_upstream_duration_seconds", "Duration of one attempt at a replica.",
            ["upstream"], buckets=LATENCY_BUCKETS, registry=r,
        )
        self.breaker_transitions_total = Counter(
            "rerankd_gateway_breaker_transitions_total", "Circuit breaker state changes, by replica and new state.",
            ["upstream", "to"], registry=r,
        )
        self.retries_total = Counter(
            "rerankd_gateway_retries_total", "Attempts retried on another replica, by reason.", ["reason"], registry=r,
        )
        self.retry_budget_exhausted_total = Counter(
            "rerankd_gateway_retry_budget_exhausted_total", "Retries refused because the retry budget was spent.",
            registry=r,
        )
        self.split_requests_total = Counter(
            "rerankd_gateway_split_requests_total", "Requests split across replicas.", registry=r,
        )
        self.split_parts = Histogram(
            "rerankd_gateway_split_parts", "Parts per split request.", buckets=(2, 3, 4, 6, 8, 12, 16, 32, 64),
            registry=r,
        )
        self.no_upstream_total = Counter(
            "rerankd_gateway_no_upstream_total", "Requests answered 503 because no replica could serve them.",
            registry=r,
        )
        # Rollouts (rerankd.gateway.rollout, rerankd.gateway.shadow); labels are configured pool names: bounded.
        self.pool_requests_total = Counter(
            "rerankd_gateway_pool_requests_total",
            "Scoring requests routed, by the pool the model table chose (model) and the pool that took it (pool: "
            "another one when a canary rollout moved it).", ["model", "pool"], registry=r,
        )
        self.shadow_requests_total = Counter(
            "rerankd_gateway_shadow_requests_total",
            "Live requests sampled for the shadow pool, by outcome (compared; failed: the shadow erred, its answer "
            "is only counted; dropped: --shadow-concurrency was reached).",
            ["model", "pool", "shadow", "outcome"], registry=r,
        )
        self.shadow_score_drift = Histogram(
            "rerankd_gateway_shadow_score_drift",
            "|live score - shadow score| of each document both answers scored (sum/count: the mean drift).",
            ["model", "pool", "shadow"], buckets=DRIFT_BUCKETS, registry=r,
        )
        self.shadow_spearman = Histogram(
            "rerankd_gateway_shadow_spearman",
            "Spearman's rho between the live and the shadow ranking, one per compared request (2+ documents). No "
            "_sum: rho can be negative, and a sum that falls is no counter; read it by buckets (histogram_quantile).",
            ["model", "pool", "shadow"], buckets=SPEARMAN_BUCKETS, registry=r,
        )
        self.shadow_top_k_overlap = Histogram(
            "rerankd_gateway_shadow_top_k_overlap",
            "Share of the live answer's top k documents also in the shadow's top k, one per compared request.",
            ["model", "pool", "shadow"], buckets=OVERLAP_BUCKETS, registry=r,
        )
        # Auth and limits
        self.auth_failures_total = Counter(
            "rerankd_gateway_auth_failures_total",
            "Requests refused by authentication or authorisation, by reason.", ["reason"], registry=r,
        )
        self.rate_limited_total = Counter(
            "rerankd_gateway_rate_limited_total", "Requests answered 429, by limit (requests, tokens).",
            ["limit"], registry=r,
        )
        # Labelled counters start at 0 so rate() and dashboards show 0, not "no data", before the first event.
        for reason in ("connect_error", "timeout", "error", "server_error", "busy"):
            self.retries_total.labels(reason=reason)
        for limit in ("requests", "tokens"):
            self.rate_limited_total.labels(limit=limit)
        for reason in ("missing", "malformed", "invalid_key", "jwt_invalid", "jwt_disabled", "not_admin",
                       "key_store_unavailable"):
            self.auth_failures_total.labels(reason=reason)

    def exposition(self, *, with_keys: bool) -> bytes:
        """The Prometheus text of a scrape: per-key series by name only ``with_keys`` (a scrape holding
        ``--metrics-token``), else the per-key families summed over keys."""
        if not with_keys:
            return generate_latest(self.registry)
        return generate_latest(_NamedKeysView(self.registry, self._all_keys, self.tenant_registry))

    def forget_upstream(self, upstream: str) -> None:
        """Drop a departed replica's labelled series: discovered addresses churn, series must not pile up."""
        for state in BREAKER_STATES:
            _remove(self.breaker_transitions_total, upstream, state)
        for outcome in ("success", "error", "timeout", "connect_error", "rejected", "too_large"):
            _remove(self.upstream_requests_total, upstream, outcome)
        _remove(self.upstream_duration_seconds, upstream)

    def watch_upstream(self, upstream: str) -> None:
        """Create a replica's labelled transition series at 0 when it joins the pool."""
        for state in BREAKER_STATES:
            self.breaker_transitions_total.labels(upstream=upstream, to=state)

    def mirror(self, pool: ReplicaSet, ledger: UsageLedger, limiter: RateLimiter) -> GatewayStateCollector:
        """Export the components' own state from now on (until :meth:`unmirror`)."""
        collector = GatewayStateCollector(pool, ledger, limiter)
        self.registry.register(collector)
        return collector

    def unmirror(self, collector: GatewayStateCollector) -> None:
        """Stop exporting ``collector`` (at shutdown: a later start mirrors its new components)."""
        self.registry.unregister(collector)


def _remove(metric: Counter | Histogram, *labels: str) -> None:
    with contextlib.suppress(KeyError):  # never counted
        metric.remove(*labels)


class AllKeysCollector(Collector):
    """The per-key families of ``tenant`` summed over ``key`` (one ``key="*"`` series per other label set).

    Read from the counters at scrape time, like :class:`GatewayStateCollector`: nothing is counted twice.
    """

    def __init__(self, tenant: CollectorRegistry) -> None:
        self._tenant = tenant

    def describe(self) -> Iterator[Metric]:
        return (Metric(f.name, f.documentation, f.type) for f in self._tenant.collect())

    def collect(self) -> Iterator[Metric]:
        for family in self._tenant.collect():
            totals: dict[tuple[str, tuple[tuple[str, str], ...]], float] = defaultdict(float)
            for sample in family.samples:
                if sample.name.endswith("_created"):
                    continue  # one creation time per key; a sum has none
                labels = {**sample.labels, "key": ALL_KEYS_LABEL}
                totals[(sample.name, tuple(sorted(labels.items())))] += sample.value
            summed = Metric(family.name, family.documentation + " Summed over keys (key=\"*\"); a scrape with "
                            "--metrics-token sees them by name.", family.type)
            for (name, pairs), value in totals.items():
                summed.add_sample(name, dict(pairs), value)
            yield summed


class _NamedKeysView:
    """A registry-like ``collect()`` over ``base`` without ``left_out``, then ``extra`` (the named view)."""

    def __init__(self, base: CollectorRegistry, left_out: AllKeysCollector, extra: CollectorRegistry) -> None:
        self._base = base
        self._left_out = {m.name for m in left_out.describe()}
        self._extra = extra

    def collect(self) -> Iterable[Metric]:
        yield from (m for m in self._base.collect() if m.name not in self._left_out)
        yield from self._extra.collect()


class GatewayStateCollector(Collector):
    """The gateway components' state, read from the components themselves on each scrape.

    Why a collector and not gauges set from the outside: the pool, the ledger and the limiter already
    count what they do (``ledger.written``, ``limiter.storage_errors``, ...). Reading those at scrape
    time exports the truth with no delta bookkeeping that could drift, and a replica that left the pool
    (DNS) simply stops appearing, with no stale series to remove. ``collect`` runs on the event loop
    (``/metrics`` is an ``async`` route), the only thread that changes these components.
    """

    def __init__(self, pool: ReplicaSet, ledger: UsageLedger, limiter: RateLimiter) -> None:
        self._pool = pool
        self._ledger = ledger
        self._limiter = limiter

    def describe(self) -> Iterator[Metric]:
        """The families without samples, so the registry can refuse a duplicate name at registration."""
        return iter(_families())

    def collect(self) -> Iterator[Metric]:
        f = _families()
        upstreams = self._pool.upstreams
        f.upstreams.add_metric([], len(upstreams))
        f.healthy.add_metric([], self._pool.available_count())
        for u in upstreams:
            f.up.add_metric([u.url], 1 if u.healthy else 0)
            f.inflight.add_metric([u.url], u.outstanding)
            current = u.breaker.state.value
            for state in BREAKER_STATES:  # one-hot, so `== 1` selects the state in PromQL
                f.breaker.add_metric([u.url, state], 1 if state == current else 0)
        ledger = self._ledger
        f.ledger_rows.add_metric([], ledger.written)
        f.ledger_errors.add_metric([], ledger.flush_failures)
        # Rows the ledger set aside after repeated failures (a ledger without a dead-letter path has none).
        f.ledger_dead_letter.add_metric([], ledger.dead_lettered)
        f.ledger_pending.add_metric([], ledger.pending())
        f.ledger_lag.add_metric([], ledger.lag_seconds())
        f.storage_errors.add_metric([], self._limiter.storage_errors)
        return iter(f)


class _Families(NamedTuple):
    upstreams: GaugeMetricFamily
    healthy: GaugeMetricFamily
    up: GaugeMetricFamily
    breaker: GaugeMetricFamily
    inflight: GaugeMetricFamily
    ledger_rows: CounterMetricFamily
    ledger_errors: CounterMetricFamily
    ledger_dead_letter: CounterMetricFamily
    ledger_pending: GaugeMetricFamily
    ledger_lag: GaugeMetricFamily
    storage_errors: CounterMetricFamily


def _families() -> _Families:
    """Fresh, empty families of everything :class:`GatewayStateCollector` exports (names are the contract)."""
    return _Families(
        upstreams=GaugeMetricFamily("rerankd_gateway_upstreams", "Replicas known to the gateway."),
        healthy=GaugeMetricFamily(
            "rerankd_gateway_healthy_upstreams", "Replicas passing health checks with a closed breaker."),
        up=GaugeMetricFamily(
            "rerankd_gateway_upstream_up", "1 when the replica's last health check passed, else 0.",
            labels=["upstream"]),
        breaker=GaugeMetricFamily(
            "rerankd_gateway_upstream_breaker_state", "1 for the breaker's current state of each replica.",
            labels=["upstream", "state"]),
        inflight=GaugeMetricFamily(
            "rerankd_gateway_upstream_inflight", "Attempts outstanding at each replica.", labels=["upstream"]),
        ledger_rows=CounterMetricFamily(
            "rerankd_gateway_ledger_rows_total", "Usage rows committed to the ledger database."),
        ledger_errors=CounterMetricFamily(
            "rerankd_gateway_ledger_write_errors_total", "Ledger batch writes that failed (retried)."),
        ledger_dead_letter=CounterMetricFamily(
            "rerankd_gateway_ledger_dead_letter_rows_total",
            "Usage rows the ledger set aside (dead letter) instead of writing them."),
        ledger_pending=GaugeMetricFamily("rerankd_gateway_ledger_pending_rows", "Usage rows waiting to be written."),
        ledger_lag=GaugeMetricFamily(
            "rerankd_gateway_ledger_lag_seconds", "Age of the oldest usage row not yet written."),
        storage_errors=CounterMetricFamily(
            "rerankd_gateway_ratelimit_storage_errors_total",
            "Rate-limit checks that could not reach the storage (Redis); answered per --ratelimit-fail-open."),
    )
