"""Every metric (and label) the Prometheus rules and Grafana dashboards query is one the code exports.

A renamed metric would otherwise leave an alert that can never fire and a panel that shows "No data",
with nothing failing. Names come from the real registries (``ServerMetrics``, ``GatewayMetrics``), plus
the recording rules' own outputs, the DCGM exporter's fields and Prometheus' ``up``.
"""

from __future__ import annotations

import re
from types import SimpleNamespace

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.metrics import MetricWrapperBase

from promql_names import DASHBOARDS, RULE_FILES, all_exprs, metric_names, rules, selector_labels
from rerankd.gateway.db import create_engine_for
from rerankd.gateway.ledger import UsageLedger
from rerankd.gateway.pool import UpstreamPool
from rerankd.gateway.ratelimit import RateLimiter
from rerankd.observability.alert_delivery import Robot
from rerankd.observability.alert_relay import RelaySettings, create_relay_app
from rerankd.observability.gateway_metrics import GatewayMetrics
from rerankd.observability.gpu import GpuCollector
from rerankd.observability.metrics import ServerMetrics

# Fields of NVIDIA's dcgm-exporter default counters (etc/default-counters.csv) that may be queried.
DCGM_METRICS = {
    "DCGM_FI_DEV_GPU_UTIL", "DCGM_FI_DEV_MEM_COPY_UTIL", "DCGM_FI_DEV_FB_USED", "DCGM_FI_DEV_FB_FREE",
    "DCGM_FI_DEV_FB_RESERVED", "DCGM_FI_DEV_GPU_TEMP", "DCGM_FI_DEV_MEMORY_TEMP", "DCGM_FI_DEV_POWER_USAGE",
    "DCGM_FI_DEV_SM_CLOCK", "DCGM_FI_DEV_MEM_CLOCK", "DCGM_FI_DEV_XID_ERRORS", "DCGM_FI_PROF_GR_ENGINE_ACTIVE",
    "DCGM_FI_PROF_PIPE_TENSOR_ACTIVE", "DCGM_FI_PROF_DRAM_ACTIVE",
}
PROMETHEUS_METRICS = {"up"}
TARGET_LABELS = {"job", "instance", "namespace", "pod", "service"}  # added by scraping, on every series


class _FakeNvml:
    """Just enough NVML for the GPU collector to emit its families (there is no GPU here)."""

    def nvmlInit(self) -> None: ...
    def nvmlDeviceGetCount(self) -> int: return 1
    def nvmlDeviceGetHandleByIndex(self, i: int) -> int: return i
    def nvmlDeviceGetUUID(self, h: int) -> str: return "GPU-0"
    def nvmlDeviceGetName(self, h: int) -> str: return "fake"
    def nvmlDeviceGetMemoryInfo(self, h: int) -> SimpleNamespace: return SimpleNamespace(used=1, total=2)
    def nvmlDeviceGetUtilizationRates(self, h: int) -> SimpleNamespace: return SimpleNamespace(gpu=50)


_SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "summary": ("", "_sum", "_count", "_created"),
    "info": ("_info",),
    "gauge": ("",),
}


def _exported() -> tuple[set[str], dict[str, set[str]]]:
    """(every series name the code can export, label names per series name): server, gateway, relay."""
    server = ServerMetrics(gpu=GpuCollector(_FakeNvml(), cuda_visible_devices=""))
    gateway = GatewayMetrics()
    # The components' state is read from real (never started) components: one replica, so labelled series exist.
    gateway.mirror(UpstreamPool(["http://replica:8000"]), UsageLedger(create_engine_for("sqlite://")), RateLimiter())
    relay = create_relay_app(RelaySettings(robots=(Robot("wecom", "http://robot"),)))
    relay_registry: CollectorRegistry = relay.state.registry
    names: set[str] = set()
    labels: dict[str, set[str]] = {}
    registries: list[CollectorRegistry] = [server.registry, gateway.registry, relay_registry]
    for registry in registries:
        for family in registry.collect():
            for suffix in _SUFFIXES.get(family.type, ("",)):
                names.add(family.name + suffix)
            for sample in family.samples:
                names.add(sample.name)
                labels.setdefault(sample.name, set()).update(sample.labels)
    # Labelled metrics without children export no sample yet: read their declared label names.
    wrappers = [*vars(server).values(), *vars(gateway).values(), relay.state.deliveries]
    for metric in wrappers:
        if isinstance(metric, MetricWrapperBase):
            declared = set(metric._labelnames)
            for suffix in _SUFFIXES.get(metric._type, ("",)):
                extra = {"le"} if suffix == "_bucket" else set()
                labels.setdefault(metric._name + suffix, set()).update(declared | extra)
    return names, labels


# ----------------------------------------------------------------------------------- the extractor


@pytest.mark.parametrize(("expr", "expected"), [
    ('sum by (job, le) (rate(foo_bucket{route=~"/v1/rerank|/rerank",job="x"}[5m]))', {"foo_bucket"}),
    ("histogram_quantile(0.99, sum(rate(a_bucket[$__rate_interval])) by (le)) > 1e3", {"a_bucket"}),
    ("x / on (job) group_left (model) y offset 5m or z unless bool_thing", {"x", "y", "z", "bool_thing"}),
    ('2 * m{state="open"} + on (upstream) max by (upstream) (n{state="half_open"}) == 0x1f', {"m", "n"}),
    ('{__name__="by_name_only", job="j"} and job:rec:rate5m', {"by_name_only", "job:rec:rate5m"}),
    ('label_replace(q, "dst", "$1", "src", "(.*)") * ${scale} + topk(10, r)', {"q", "r"}),
    ('avg_over_time(DCGM_FI_DEV_GPU_UTIL[5m:1m]) / 100 > Inf', {"DCGM_FI_DEV_GPU_UTIL"}),
])
def test_metric_names_extracts_exactly_the_selected_metrics(expr: str, expected: set[str]) -> None:
    assert metric_names(expr) == expected


def test_the_check_catches_a_wrong_name_and_a_wrong_label() -> None:
    exported, labels = _exported()
    assert metric_names("rate(rerankd_requests_total[5m])") <= exported
    assert not metric_names("rate(rerankd_request_total[5m])") <= exported  # one letter off
    assert {"route", "status"} <= labels["rerankd_requests_total"]
    assert list(selector_labels('rate(rerankd_requests_total{rout="/v1/rerank"}[5m])')) == [
        ("rerankd_requests_total", "rout")]
    assert "rout" not in labels["rerankd_requests_total"]


# ----------------------------------------------------------------------------------- the real files


def test_there_is_something_to_check() -> None:
    assert len(RULE_FILES) >= 2 and len(DASHBOARDS) >= 2
    exprs = all_exprs()
    assert len(exprs) > 60
    assert all(metric_names(e) for _, e in exprs), "an expression with no metric: extractor broken?"


def test_every_queried_metric_is_exported() -> None:
    exported, _ = _exported()
    recorded = {r["record"] for r in rules() if "record" in r}
    known = exported | recorded | DCGM_METRICS | PROMETHEUS_METRICS
    unknown = {(where, name) for where, expr in all_exprs() for name in metric_names(expr) if name not in known}
    assert not unknown, f"metrics queried but never exported: {sorted(unknown)}"


def test_every_exported_gpu_and_queue_metric_appears_somewhere() -> None:
    """The reverse check for the metrics this issue is about: a dashboard shows each of them."""
    used = {name for _, expr in all_exprs() for name in metric_names(expr)}
    for name in ("rerankd_gpu_memory_used_bytes", "rerankd_gpu_memory_total_bytes", "rerankd_gpu_utilization_ratio",
                 "rerankd_queue_depth", "rerankd_queue_capacity", "rerankd_batch_size_bucket",
                 "rerankd_compiled_kernels_ready", "rerankd_score_cache_hits_total", "rerankd_score_cache_misses_total",
                 "rerankd_gateway_upstream_breaker_state", "rerankd_gateway_ledger_lag_seconds",
                 "rerankd_gateway_rate_limited_total",
                 # read by the endpoint picker (deploy/k8s/overlays/inference-gateway/epp-config.yaml)
                 "rerankd_requests_running", "rerankd_token_utilization_ratio"):
        assert name in used


def test_every_label_matcher_names_a_label_the_metric_has() -> None:
    exported, labels = _exported()
    wrong = set()
    for where, expr in all_exprs():
        for metric, label in selector_labels(expr):
            if metric in exported and label not in labels.get(metric, set()) | TARGET_LABELS:
                wrong.add((where, metric, label))
    assert not wrong, f"label matchers on labels the metric does not have: {sorted(wrong)}"


def test_request_token_and_latency_series_carry_the_task_label() -> None:
    """Server and gateway: rerank and embed traffic are told apart by ``task`` (the dashboards' "By task" rows)."""
    _, labels = _exported()
    for name in ("rerankd_requests_total", "rerankd_request_duration_seconds_bucket", "rerankd_request_tokens_sum",
                 "rerankd_request_documents_sum", "rerankd_gateway_requests_total",
                 "rerankd_gateway_request_duration_seconds_bucket", "rerankd_gateway_key_requests_total",
                 "rerankd_gateway_key_tokens_total", "rerankd_gateway_key_documents_total"):
        assert "task" in labels[name], name
    used = {name for _, expr in all_exprs() for name, label in selector_labels(expr) if label == "task"}
    assert {"rerankd_requests_total", "rerankd_gateway_requests_total"} <= used


def test_recording_rule_names_follow_level_metric_operations() -> None:
    for rule in rules():
        if "record" in rule:
            assert re.fullmatch(r"[a-z_]+:[a-z0-9_]+:[a-z0-9_]+", rule["record"]), rule["record"]
