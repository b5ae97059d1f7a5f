"""GPU memory and utilisation from NVML, as a Prometheus collector of ``rerankd_gpu_*`` series.

Why a custom collector rather than gauges set by a thread: the values are read at scrape time, so they
are never stale, and when there is no GPU (no ``pynvml``, no driver, NVML init fails) the collector
yields *nothing*. Absent series, not zeros: a zero would read as "idle GPU" on a dashboard and hide
that the numbers are missing, while an absent series makes ``absent()`` / "No data" tell the truth.

The NVML module is injectable so the logic can be tested without a GPU; in production it is
``pynvml`` from the ``nvidia-ml-py`` package (extra ``gpu``).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

__all__ = ["GPU_METRIC_NAMES", "GpuCollector", "visible_device_filter"]

log = logging.getLogger("rerankd.gpu")

GPU_METRIC_NAMES = (
    "rerankd_gpu_memory_used_bytes",
    "rerankd_gpu_memory_total_bytes",
    "rerankd_gpu_utilization_ratio",
)
_LABELS = ["gpu", "uuid", "model"]


@dataclass(frozen=True)
class _Device:
    index: int
    uuid: str
    model: str
    handle: Any


def _text(value: str | bytes) -> str:
    """Old pynvml versions return ``bytes`` for names and UUIDs, new ones ``str``."""
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def visible_device_filter(cuda_visible_devices: str | None) -> Callable[[int, str], bool]:
    """Which NVML devices this process uses, from ``CUDA_VISIBLE_DEVICES``.

    NVML sees every GPU of the machine regardless of that variable; without this filter a server
    pinned to GPU 1 would also report GPU 0, which belongs to a neighbour. Entries are indices
    (``"0,2"``) or UUIDs (``"GPU-8f3a..."``, prefixes allowed, as CUDA accepts). Unset means all; an
    entry we cannot interpret (MIG ids) also means all, since reporting too much beats reporting nothing.
    """
    if cuda_visible_devices is None or not cuda_visible_devices.strip():
        return lambda _index, _uuid: True
    entries = [e.strip() for e in cuda_visible_devices.split(",") if e.strip()]
    indices = {int(e) for e in entries if e.isdigit()}
    uuids = [e for e in entries if e.startswith("GPU-")]
    if len(indices) + len(uuids) != len(entries):
        return lambda _index, _uuid: True
    return lambda index, uuid: index in indices or any(uuid.startswith(u) for u in uuids)


class GpuCollector(Collector):
    """Reads memory used/total and utilisation of each visible GPU at every scrape.

    NVML is initialised on the first scrape, not at construction, so creating server metrics costs
    nothing on a CPU machine and never fails. When initialisation fails the collector stays silent and
    tries again after ``retry_interval`` seconds (a driver can come back after a reset).
    """

    def __init__(
        self,
        nvml: Any | None = None,
        *,
        cuda_visible_devices: str | None = None,
        retry_interval: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``nvml``: a module with pynvml's API (``None``: import ``pynvml`` lazily).
        ``cuda_visible_devices``: defaults to the process environment at first scrape."""
        self._nvml = nvml
        self._visible = cuda_visible_devices
        self._retry_interval = retry_interval
        self._clock = clock
        self._lock = threading.Lock()
        self._devices: list[_Device] | None = None
        self._failed_at: float | None = None
        self._warned = False

    def describe(self) -> list[Metric]:
        """Nothing to announce: registering must not touch NVML (see the class docstring)."""
        return []

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            devices = self._ready_devices()
        if not devices:
            return
        used = GaugeMetricFamily(GPU_METRIC_NAMES[0], "GPU memory in use, all processes.", labels=_LABELS)
        total = GaugeMetricFamily(GPU_METRIC_NAMES[1], "GPU memory installed.", labels=_LABELS)
        util = GaugeMetricFamily(
            GPU_METRIC_NAMES[2], "Fraction of the last sample period in which a kernel ran (0-1).", labels=_LABELS,
        )
        nvml = self._nvml
        assert nvml is not None  # devices exist only once NVML has loaded
        for dev in devices:
            labels = [str(dev.index), dev.uuid, dev.model]
            try:
                memory = nvml.nvmlDeviceGetMemoryInfo(dev.handle)
                used.add_metric(labels, float(memory.used))
                total.add_metric(labels, float(memory.total))
            except Exception as exc:  # one device lost or busy: skip its values, keep the others
                log.debug("NVML memory query failed for GPU %d: %s", dev.index, exc)
            try:
                util.add_metric(labels, nvml.nvmlDeviceGetUtilizationRates(dev.handle).gpu / 100.0)
            except Exception as exc:  # e.g. NotSupported on MIG instances
                log.debug("NVML utilisation query failed for GPU %d: %s", dev.index, exc)
        for family in (used, total, util):
            if family.samples:  # a family without samples would still print HELP/TYPE lines
                yield family

    def _ready_devices(self) -> list[_Device]:
        if self._devices is not None:
            return self._devices
        if self._failed_at is not None and self._clock() - self._failed_at < self._retry_interval:
            return []
        try:
            self._devices = self._discover()
            self._failed_at = None
            log.info("NVML: reporting %d GPU(s)", len(self._devices))
            return self._devices
        except Exception as exc:
            self._failed_at = self._clock()
            # Once at info (a CPU-only host is normal), then quietly: a scrape every 15 s must not spam.
            (log.debug if self._warned else log.info)("no GPU metrics: NVML unavailable (%s)", exc)
            self._warned = True
            return []

    def _discover(self) -> list[_Device]:
        if self._nvml is None:
            import pynvml  # deferred: optional dependency (extra `gpu`)

            self._nvml = pynvml
        nvml = self._nvml
        nvml.nvmlInit()
        visible = visible_device_filter(
            self._visible if self._visible is not None else os.environ.get("CUDA_VISIBLE_DEVICES")
        )
        devices = []
        for index in range(nvml.nvmlDeviceGetCount()):
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            uuid = _text(nvml.nvmlDeviceGetUUID(handle))
            if visible(index, uuid):
                devices.append(_Device(index, uuid, _text(nvml.nvmlDeviceGetName(handle)), handle))
        return devices
