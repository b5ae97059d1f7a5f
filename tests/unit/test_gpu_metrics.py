"""The NVML collector: absent series without a GPU, correct values with one (a fake NVML stands in)."""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from rerankd.observability.gpu import GPU_METRIC_NAMES, GpuCollector, visible_device_filter
from rerankd.observability.metrics import ServerMetrics


class NVMLError(Exception):
    pass


@dataclass
class FakeNvml:
    """pynvml's API surface the collector uses, for two H100-like GPUs."""

    fail_init: bool = False
    init_calls: int = 0
    utilization_supported: bool = True

    def nvmlInit(self) -> None:
        self.init_calls += 1
        if self.fail_init:
            raise NVMLError("Driver Not Loaded")

    def nvmlDeviceGetCount(self) -> int:
        return 2

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        return index

    def nvmlDeviceGetUUID(self, handle: int) -> bytes:
        return f"GPU-{handle}aaa-bbbb".encode()  # old pynvml returns bytes

    def nvmlDeviceGetName(self, handle: int) -> str:
        return "NVIDIA H100 80GB HBM3"

    def nvmlDeviceGetMemoryInfo(self, handle: int) -> SimpleNamespace:
        return SimpleNamespace(used=(handle + 1) * 10 * 2**30, total=80 * 2**30, free=0)

    def nvmlDeviceGetUtilizationRates(self, handle: int) -> SimpleNamespace:
        if not self.utilization_supported:
            raise NVMLError("Not Supported")
        return SimpleNamespace(gpu=37 + handle, memory=5)


def _samples(registry: CollectorRegistry) -> dict[tuple[str, str], float]:
    return {(s.name, s.labels["gpu"]): s.value for fam in registry.collect() for s in fam.samples
            if s.name.startswith("rerankd_gpu_")}


def test_this_gpu_less_machine_exports_no_gpu_series_and_scrapes_fine() -> None:
    """The real path: pynvml (or its shared library) is missing here, and /metrics must not care."""
    metrics = ServerMetrics()
    for _ in range(2):  # the second scrape takes the "failed recently" branch
        text = generate_latest(metrics.registry).decode()
        assert "rerankd_gpu_" not in text
        assert "rerankd_queue_depth" in text


def test_values_labels_and_units_from_nvml() -> None:
    registry = CollectorRegistry()
    registry.register(GpuCollector(FakeNvml(), cuda_visible_devices=""))
    samples = _samples(registry)
    assert samples[("rerankd_gpu_memory_used_bytes", "0")] == 10 * 2**30
    assert samples[("rerankd_gpu_memory_used_bytes", "1")] == 20 * 2**30
    assert samples[("rerankd_gpu_memory_total_bytes", "1")] == 80 * 2**30
    assert samples[("rerankd_gpu_utilization_ratio", "0")] == pytest.approx(0.37)
    [labels] = [s.labels for fam in registry.collect() for s in fam.samples
                if s.name == "rerankd_gpu_utilization_ratio" and s.labels["gpu"] == "1"]
    assert labels == {"gpu": "1", "uuid": "GPU-1aaa-bbbb", "model": "NVIDIA H100 80GB HBM3"}
    assert {name for name, _ in samples} == set(GPU_METRIC_NAMES)


def test_only_the_devices_cuda_makes_visible() -> None:
    registry = CollectorRegistry()
    registry.register(GpuCollector(FakeNvml(), cuda_visible_devices="GPU-1aaa"))
    assert {gpu for _, gpu in _samples(registry)} == {"1"}


def test_failed_init_is_silent_and_retried_after_the_interval() -> None:
    nvml, now = FakeNvml(fail_init=True), [0.0]
    collector = GpuCollector(nvml, cuda_visible_devices="", retry_interval=60, clock=lambda: now[0])
    registry = CollectorRegistry()
    registry.register(collector)
    assert nvml.init_calls == 0  # registering does not touch NVML
    assert "rerankd_gpu_" not in generate_latest(registry).decode()  # absent: no HELP/TYPE lines either
    now[0] = 30.0
    generate_latest(registry)
    assert nvml.init_calls == 1  # not retried within the interval
    nvml.fail_init, now[0] = False, 61.0
    assert _samples(registry)[("rerankd_gpu_memory_total_bytes", "0")] == 80 * 2**30
    assert nvml.init_calls == 2


def test_an_unsupported_query_drops_only_that_metric() -> None:
    registry = CollectorRegistry()
    registry.register(GpuCollector(FakeNvml(utilization_supported=False), cuda_visible_devices=""))
    names = {name for name, _ in _samples(registry)}
    assert names == {"rerankd_gpu_memory_used_bytes", "rerankd_gpu_memory_total_bytes"}
    assert "rerankd_gpu_utilization_ratio" not in generate_latest(registry).decode()


@pytest.mark.parametrize(("env", "index", "uuid", "expected"), [
    (None, 3, "GPU-x", True),
    ("", 3, "GPU-x", True),
    ("0,2", 2, "GPU-x", True),
    ("0,2", 1, "GPU-x", False),
    ("GPU-ab", 5, "GPU-abcdef", True),
    ("GPU-ab", 0, "GPU-cdef", False),
    ("MIG-1234", 0, "GPU-cdef", True),  # cannot tell: report rather than hide
])
def test_visible_device_filter(env: str | None, index: int, uuid: str, expected: bool) -> None:
    assert visible_device_filter(env)(index, uuid) is expected
