"""The gateway's state metrics are read from the real components at scrape time, under the contract's names."""

from __future__ import annotations

from pathlib import Path

from prometheus_client import generate_latest

from rerankd.gateway.breaker import CircuitBreaker
from rerankd.gateway.db import create_engine_for, init_schema
from rerankd.gateway.ledger import UsageEntry, UsageLedger
from rerankd.gateway.pool import UpstreamPool
from rerankd.gateway.ratelimit import RateLimiter
from rerankd.observability.gateway_metrics import GatewayMetrics

A, B = "http://replica-a:8000", "http://replica-b:8000"


def entry(i: int) -> UsageEntry:
    return UsageEntry(request_id=f"r{i}", key_id="k", model="m", documents=1, tokens=3, latency_ms=1.0, status=200,
                      route="/v1/rerank")


async def test_each_scrape_reads_the_components_as_they_are_now(tmp_path: Path) -> None:
    pool = UpstreamPool([A, B], breaker_factory=lambda: CircuitBreaker(failure_threshold=1))
    engine = create_engine_for(f"sqlite:///{tmp_path / 'gw.db'}")
    await init_schema(engine)
    ledger = UsageLedger(engine)
    limiter = RateLimiter("redis://127.0.0.1:1", fail_open=True)  # nothing listens there: a storage error
    metrics = GatewayMetrics()
    collector = metrics.mirror(pool, ledger, limiter)
    value = metrics.registry.get_sample_value

    assert value("rerankd_gateway_upstreams") == 2 and value("rerankd_gateway_healthy_upstreams") == 2
    assert value("rerankd_gateway_ledger_rows_total") == 0
    assert value("rerankd_gateway_ledger_dead_letter_rows_total") == 0

    a, b = pool.upstreams
    b.healthy = False
    a.breaker.record_failure()  # threshold 1: open
    async with pool.lease(a), pool.lease(a):
        assert value("rerankd_gateway_upstream_inflight", {"upstream": A}) == 2
    assert value("rerankd_gateway_upstream_inflight", {"upstream": A}) == 0
    assert value("rerankd_gateway_healthy_upstreams") == 0
    assert value("rerankd_gateway_upstream_up", {"upstream": A}) == 1
    assert value("rerankd_gateway_upstream_up", {"upstream": B}) == 0
    one_hot = {s: value("rerankd_gateway_upstream_breaker_state", {"upstream": A, "state": s})
               for s in ("closed", "open", "half_open")}
    assert one_hot == {"closed": 0, "open": 1, "half_open": 0}

    for i in range(3):
        ledger.record(entry(i))
    assert value("rerankd_gateway_ledger_pending_rows") == 3
    lag = value("rerankd_gateway_ledger_lag_seconds")
    assert lag is not None and lag >= 0
    ledger.start()
    assert await ledger.close() == 0
    assert value("rerankd_gateway_ledger_rows_total") == 3 and value("rerankd_gateway_ledger_pending_rows") == 0
    ledger._dead_letters.refused = 2  # as if the database had refused two rows (set aside)
    assert value("rerankd_gateway_ledger_dead_letter_rows_total") == 2

    await limiter.check_request("k", 10)
    assert value("rerankd_gateway_ratelimit_storage_errors_total") == limiter.storage_errors == 1

    text = generate_latest(metrics.registry).decode()
    assert "# TYPE rerankd_gateway_ledger_rows_total counter" in text
    assert "# TYPE rerankd_gateway_upstream_up gauge" in text

    metrics.unmirror(collector)
    assert value("rerankd_gateway_upstreams") is None
    await limiter.close()
    await engine.dispose()
