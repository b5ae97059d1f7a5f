"""After real traffic through a gateway and a server, their /metrics hold what the rules and dashboards query.

The unit test ``test_metric_names`` checks names against the registries; this one checks what a real
scrape returns, so a metric that is declared but never set (or set only under another name) is caught.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from promql_names import all_exprs, metric_names, rules
from rerankd.gateway.settings import GatewaySettings
from support import running_gateway

pytestmark = pytest.mark.timeout(180)

ADMIN = "metrics-admin-secret"

# Series that only exist once their event happened (labelled counters get a child on first use) or on
# the hardware they describe. Each is named with the reason, so the list cannot hide a plain typo.
_SHADOW = "exported by a gateway with a shadow rollout (checked in test_gateway_rollout)"
EVENT_OR_HARDWARE_ONLY = {
    "rerankd_gpu_memory_used_bytes": "needs a GPU (NVML)",
    "rerankd_gpu_memory_total_bytes": "needs a GPU (NVML)",
    "rerankd_gpu_utilization_ratio": "needs a GPU (NVML)",
    "rerankd_alert_relay_deliveries_total": "exported by `rerankd alert-relay` (checked in test_alert_relay)",
    "rerankd_gateway_shadow_spearman_bucket": _SHADOW,
    "rerankd_gateway_shadow_top_k_overlap_sum": _SHADOW,
    "rerankd_gateway_shadow_top_k_overlap_count": _SHADOW,
    "rerankd_gateway_shadow_score_drift_sum": _SHADOW,
    "rerankd_gateway_shadow_score_drift_count": _SHADOW,
}
NOT_FROM_RERANKD = {"up"}  # Prometheus' own; DCGM_FI_* come from the DCGM exporter


def _scrape(url: str) -> set[str]:
    response = httpx.get(f"{url}/metrics", timeout=10)
    assert response.status_code == 200
    return {s.name for family in text_string_to_metric_families(response.text) for s in family.samples}


@pytest.fixture(scope="module")
def traffic(server_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """A gateway in front of the tiny-model server, after successes, a 429 and an auth failure."""
    tmp: Path = tmp_path_factory.mktemp("metrics")
    settings = GatewaySettings(upstreams=[server_url], database_url=f"sqlite:///{tmp / 'gw.db'}", admin_key=ADMIN)
    with running_gateway(settings) as gateway:
        deadline = time.monotonic() + 30  # the first health check must pass before traffic, or we get 503s
        while httpx.get(f"{gateway}/ready", timeout=5).status_code != 200:
            assert time.monotonic() < deadline, "gateway never saw the server healthy"
            time.sleep(0.1)
        created = httpx.post(f"{gateway}/admin/keys", json={"name": "metrics-test", "rpm": 2},
                             headers={"Authorization": f"Bearer {ADMIN}"}, timeout=10)
        assert created.status_code == 201, created.text
        key = {"Authorization": f"Bearer {created.json()['key']}"}
        body = {"query": "what is a reranker", "documents": ["a model that orders documents", "a fruit", "x" * 600]}
        statuses = [httpx.post(f"{gateway}/v1/rerank", json=body, headers=key, timeout=60).status_code
                    for _ in range(3)]
        assert statuses == [200, 200, 429], statuses
        wrong = httpx.post(f"{gateway}/v1/rerank", json=body, headers={"Authorization": "Bearer nope"}, timeout=10)
        assert wrong.status_code == 401
        yield server_url, gateway


def test_every_queried_rerankd_metric_is_in_a_real_scrape(traffic: tuple[str, str]) -> None:
    server, gateway = traffic
    scraped = _scrape(server) | _scrape(gateway)
    recorded = {r["record"] for r in rules() if "record" in r}
    queried = {name for _, expr in all_exprs() for name in metric_names(expr)}
    ours = {n for n in queried if n.startswith("rerankd_")} - recorded
    assert len(ours) > 40
    missing = ours - scraped - set(EVENT_OR_HARDWARE_ONLY)
    assert not missing, f"queried by rules/dashboards but absent from /metrics after traffic: {sorted(missing)}"
    assert queried - ours - recorded - NOT_FROM_RERANKD <= {n for n in queried if n.startswith("DCGM_FI_")}


def test_the_exemptions_are_still_needed(traffic: tuple[str, str]) -> None:
    """An exemption whose series now shows up (or that no rule uses any more) must be dropped from the list."""
    server, gateway = traffic
    scraped = _scrape(server) | _scrape(gateway)
    queried = {name for _, expr in all_exprs() for name in metric_names(expr)}
    for name in EVENT_OR_HARDWARE_ONLY:
        assert name in queried, f"{name} is exempt but nothing queries it"
        assert name not in scraped, f"{name} is exempt but present: remove the exemption"
