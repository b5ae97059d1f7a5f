"""The metrics an endpoint picker reads (docs/observability.md, deploy/k8s/overlays/inference-gateway) move the
way it needs them to under load: a loaded replica reports work waiting, running and in flight while an idle one
beside it reports none, so the picker sends the next request to the idle one; once the load ends both read 0.

Real ``rerankd serve`` processes (the session's fleet); the load is real HTTP. Every change is observed on
``/metrics`` with wait_until, never slept for.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import httpx
import pytest

from support import Fleet, metric_value, wait_until

PICKER_GAUGES = ("rerankd_queue_depth", "rerankd_requests_running", "rerankd_inflight_tokens",
                 "rerankd_token_utilization_ratio")
CLIENTS = 6
BODY = {"query": "which passage is about load?",
        "documents": [f"passage {i}: " + " ".join(f"load{j % 53}" for j in range(120)) for i in range(120)]}


def gauges(url: str) -> dict[str, float]:
    return {name: metric_value(url, name) for name in PICKER_GAUGES}


@pytest.fixture
def loaded(fleet: Fleet) -> Iterator[str]:
    """``CLIENTS`` clients sending large requests back to back to the first replica until the test ends."""
    fleet.ensure_all_up()
    target = fleet.urls[0]
    stop = threading.Event()
    failures: list[str] = []

    def client() -> None:
        with httpx.Client(timeout=300) as http:
            while not stop.is_set():
                response = http.post(f"{target}/v1/rerank", json=BODY)
                if response.status_code != 200:
                    failures.append(f"{response.status_code} {response.text[:200]}")

    threads = [threading.Thread(target=client, daemon=True) for _ in range(CLIENTS)]
    for thread in threads:
        thread.start()
    try:
        yield target
    finally:
        stop.set()
        for thread in threads:
            thread.join(300)
    assert not failures, failures[:3]


def test_a_loaded_replica_reads_busy_and_an_idle_one_reads_idle(fleet: Fleet, loaded: str) -> None:
    idle = fleet.urls[1]
    seen: dict[str, float] = {}

    def busy() -> bool:  # waiting may read 0: the batcher starts every request's rows in the next passes
        seen.update(gauges(loaded))
        return (seen["rerankd_requests_running"] >= 1 and seen["rerankd_inflight_tokens"] > 0
                and 0 < seen["rerankd_token_utilization_ratio"] <= 1)

    wait_until(busy, 120, f"the loaded replica to report running work and tokens in flight ({seen})")
    assert gauges(idle) == dict.fromkeys(PICKER_GAUGES, 0.0)  # what makes the picker choose the idle one


def test_the_gauges_return_to_zero_when_the_load_ends(fleet: Fleet) -> None:
    fleet.ensure_all_up()
    target = fleet.urls[2]
    done = threading.Event()

    def one_large_request() -> None:
        httpx.post(f"{target}/v1/rerank", json=BODY, timeout=300).raise_for_status()
        done.set()

    thread = threading.Thread(target=one_large_request, daemon=True)
    thread.start()
    wait_until(lambda: done.is_set() or metric_value(target, "rerankd_inflight_tokens") > 0, 120,
               "the request's tokens to show in flight")
    thread.join(300)
    assert done.is_set()
    wait_until(lambda: gauges(target) == dict.fromkeys(PICKER_GAUGES, 0.0), 30, "every picker gauge to read 0")
