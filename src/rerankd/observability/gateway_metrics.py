"""Prometheus metrics of the gateway, under ``rerankd_gateway_``.

One registry per app, like :class:`~rerankd.observability.metrics.ServerMetrics`. Key labels carry the
key's *name* (chosen by the operator at creation), never the key or its hash.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

from rerankd.observability.metrics import LATENCY_BUCKETS

__all__ = ["BREAKER_STATES", "GatewayMetrics"]

BREAKER_STATES = ("closed", "open", "half_open")


class GatewayMetrics:
    """Every metric ``rerankd gateway`` exports. Attribute names follow the metric names."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.build_info = Info("rerankd_gateway_build", "Gateway version.", registry=r)
        self.requests_total = Counter(
            "rerankd_gateway_requests_total", "HTTP requests answered by the gateway, by route and status code.",
            ["route", "status"], registry=r,
        )
        self.request_duration_seconds = Histogram(
            "rerankd_gateway_request_duration_seconds", "Time from request received to response sent.",
            ["route"], buckets=LATENCY_BUCKETS, registry=r,
        )
        self.inflight_requests = Gauge(
            "rerankd_gateway_inflight_requests", "Requests accepted and not yet answered.", registry=r,
        )
        self.key_requests_total = Counter(
            "rerankd_gateway_key_requests_total", "Scoring requests answered, by key name and status code.",
            ["key", "status"], registry=r,
        )
        self.key_tokens_total = Counter(
            "rerankd_gateway_key_tokens_total", "Prompt tokens served, by key name.", ["key"], registry=r,
        )
        self.key_documents_total = Counter(
            "rerankd_gateway_key_documents_total", "Documents reranked, by key name.", ["key"], registry=r,
        )
        # Upstreams
        self.upstreams = Gauge("rerankd_gateway_upstreams", "Replicas known to the gateway.", registry=r)
        self.healthy_upstreams = Gauge(
            "rerankd_gateway_healthy_upstreams", "Replicas passing health checks with a closed breaker.", registry=r,
        )
        self.upstream_up = Gauge(
            "rerankd_gateway_upstream_up", "1 when the replica's last health check passed, else 0.",
            ["upstream"], registry=r,
        )
        self.upstream_breaker_state = Gauge(
            "rerankd_gateway_upstream_breaker_state", "1 for the breaker's current state of each replica.",
            ["upstream", "state"], registry=r,
        )
        self.upstream_inflight = Gauge(
            "rerankd_gateway_upstream_inflight", "Attempts outstanding at each replica.", ["upstream"], registry=r,
        )
        self.upstream_requests_total = Counter(
            "rerankd_gateway_upstream_requests_total",
            "Attempts sent to replicas, by outcome (success, error, timeout, connect_error, rejected).",
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
        # Auth and limits
        self.auth_failures_total = Counter(
            "rerankd_gateway_auth_failures_total",
            "Requests refused by authentication or authorisation, by reason.", ["reason"], registry=r,
        )
        self.rate_limited_total = Counter(
            "rerankd_gateway_rate_limited_total", "Requests answered 429, by limit (requests, tokens).",
            ["limit"], registry=r,
        )
        self.ratelimit_storage_errors_total = Counter(
            "rerankd_gateway_ratelimit_storage_errors_total",
            "Rate-limit checks that could not reach the storage (Redis); answered per --ratelimit-fail-open.",
            registry=r,
        )
        # Ledger
        self.ledger_rows_total = Counter(
            "rerankd_gateway_ledger_rows_total", "Usage rows committed to the ledger database.", registry=r,
        )
        self.ledger_write_errors_total = Counter(
            "rerankd_gateway_ledger_write_errors_total", "Ledger batch writes that failed (retried).", registry=r,
        )
        self.ledger_pending_rows = Gauge(
            "rerankd_gateway_ledger_pending_rows", "Usage rows waiting to be written.", registry=r,
        )
        self.ledger_lag_seconds = Gauge(
            "rerankd_gateway_ledger_lag_seconds", "Age of the oldest usage row not yet written.", registry=r,
        )

        # Labelled counters start at 0 so rate() and dashboards show 0, not "no data", before the first event.
        for reason in ("connect_error", "timeout", "error", "server_error", "busy"):
            self.retries_total.labels(reason=reason)
        for limit in ("requests", "tokens"):
            self.rate_limited_total.labels(limit=limit)
        for reason in ("missing", "malformed", "invalid_key", "jwt_invalid", "jwt_disabled", "not_admin",
                       "key_store_unavailable"):
            self.auth_failures_total.labels(reason=reason)

    def watch_upstream(self, upstream: str) -> None:
        """Create a replica's labelled series at 0 when it joins the pool."""
        for state in BREAKER_STATES:
            self.breaker_transitions_total.labels(upstream=upstream, to=state)
        self.set_breaker_state(upstream, "closed")

    def set_breaker_state(self, upstream: str, state: str) -> None:
        """One-hot the replica's breaker state so `== 1` selects it in PromQL."""
        for name in BREAKER_STATES:
            self.upstream_breaker_state.labels(upstream=upstream, state=name).set(1 if name == state else 0)
