"""deploy/compose.yaml brought up for real: two CPU servers, the gateway, Redis, PostgreSQL and Prometheus.

With tests/containers/compose.ci.yaml on top (stand-in images for the registry's, the tiny model, ports on
127.0.0.1): a key is created with `rerankd keys` in the gateway container, a rerank goes through the gateway
to the replicas it resolves by DNS, Prometheus scrapes the servers' and the gateway's /metrics, one server
container is killed under load with no client error, and `down -v` leaves no container, network or volume.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field

import httpx
import pytest
from containerlib import DOCKER, DOCUMENTS, ROOT, docker, inspect, wait_until

PROJECT = f"rerankd-ci-{uuid.uuid4().hex[:6]}"
SERVICES = ["server", "gateway", "redis", "postgres", "prometheus"]
pytestmark = pytest.mark.timeout(1200)


def compose(*args: str, check: bool = True, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "POSTGRES_PASSWORD": "ci-postgres-password", "RERANKD_ADMIN_KEY": "ci-admin-key",
           "RERANKD_RELAY_TOKEN": "ci-relay-token"}
    proc = subprocess.run([DOCKER, "compose", "-p", PROJECT, "-f", str(ROOT / "deploy/compose.yaml"),
                           "-f", str(ROOT / "tests/containers/compose.ci.yaml"), *args],
                          capture_output=True, text=True, timeout=timeout, env=env)
    if check and proc.returncode != 0:
        raise AssertionError(f"docker compose {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n"
                             f"{proc.stderr[-6000:]}")
    return proc


def published(service: str, port: int) -> str:
    return "http://" + compose("port", service, str(port)).stdout.strip()


def everything() -> dict[str, set[str]]:
    """Every container, network and volume the daemon has (a run's leftovers show up as a difference)."""
    return {"containers": set(docker("ps", "-aq", "--no-trunc").stdout.split()),
            "networks": set(docker("network", "ls", "-q", "--no-trunc").stdout.split()),
            "volumes": set(docker("volume", "ls", "-q").stdout.split())}


@dataclass
class Stack:
    gateway: str
    prometheus: str
    key: str
    before: dict[str, set[str]] = field(default_factory=dict)


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    before = everything()
    try:
        up = compose("up", "-d", "--no-build", "--pull", "never", "--wait", "--wait-timeout", "800", *SERVICES,
                     check=False)
        if up.returncode != 0:
            for service in SERVICES:
                print(f"---- {service}\n" + compose("logs", "--tail", "60", service, check=False).stdout[-4000:])
            raise AssertionError(f"compose up failed:\n{up.stderr[-4000:]}")
        key = json.loads(compose("exec", "-T", "gateway", "rerankd", "keys", "create", "--name", "ci",
                                 "--json").stdout)["key"]
        gateway = published("gateway", 8080)

        def both_replicas_ready() -> bool:  # the servers' HEALTHCHECK is /health: up before the model is loaded
            response = httpx.get(gateway + "/ready", timeout=10)
            return response.status_code == 200 and response.json()["healthy_replicas"] == 2

        wait_until(both_replicas_ready, 900, "the gateway to see both replicas ready",
                   lambda: compose("logs", "--tail", "30", "server", "gateway", check=False).stdout)
        yield Stack(gateway, published("prometheus", 9090), key, before)
    finally:  # after test_down_leaves_nothing_behind there is nothing left to take down
        compose("down", "-v", "--remove-orphans", "--timeout", "40", check=False)


def rerank(stack: Stack, client: httpx.Client | None = None) -> httpx.Response:
    return (client or httpx).post(stack.gateway + "/v1/rerank", timeout=120,  # type: ignore[union-attr]
                                  json={"query": "capital of France", "documents": DOCUMENTS},
                                  headers={"Authorization": f"Bearer {stack.key}"})


def test_gateway_reranks_through_both_replicas(stack: Stack) -> None:
    response = rerank(stack)
    assert response.status_code == 200, response.text
    assert sorted(r["index"] for r in response.json()["results"]) == [0, 1, 2]
    assert len(compose("ps", "-q", "server").stdout.split()) == 2
    ready = httpx.get(stack.gateway + "/ready", timeout=10).json()
    assert ready["replicas"] == ready["healthy_replicas"] == 2, ready  # `dns+http://server:8000`: both containers


def prometheus_value(stack: Stack, query: str) -> list[dict[str, object]]:
    response = httpx.get(stack.prometheus + "/api/v1/query", params={"query": query}, timeout=10)
    assert response.status_code == 200, response.text
    return response.json()["data"]["result"]  # type: ignore[no-any-return]


def test_prometheus_scrapes_servers_and_gateway(stack: Stack) -> None:
    assert rerank(stack).status_code == 200

    def scraped() -> bool:
        up = {r["metric"]["job"]: r["value"][1] for r in prometheus_value(stack, 'up{job=~"rerankd-.*"}')}
        # The gateway's own view, scraped: both replicas found by DNS and healthy; the servers counted requests.
        healthy = prometheus_value(stack, 'rerankd_gateway_healthy_upstreams{job="rerankd-gateway"}')
        served = prometheus_value(stack, 'rerankd_requests_total{job="rerankd-server"} > 0')
        return (up.get("rerankd-server") == "1" and up.get("rerankd-gateway") == "1"
                and [r["value"][1] for r in healthy] == ["2"] and bool(served))

    # The scrape interval of deploy/prometheus/prometheus.yml is 15 s.
    wait_until(scraped, 120, "Prometheus to scrape both jobs, 2 healthy upstreams and the servers' requests",
               lambda: json.dumps([prometheus_value(stack, q) for q in (
                   "up", "rerankd_gateway_healthy_upstreams", "rerankd_requests_total")]))


def test_killing_a_server_under_load_loses_no_request(stack: Stack) -> None:
    victim = compose("ps", "-q", "server").stdout.split()[0]
    served: list[int] = []
    failures: list[str] = []
    stop = threading.Event()

    def load() -> None:
        with httpx.Client() as client:
            while not stop.is_set():
                try:
                    response = rerank(stack, client)
                except httpx.HTTPError as exc:
                    failures.append(repr(exc))
                    continue
                (served if response.status_code == 200 else failures).append(
                    response.status_code if response.status_code == 200 else f"{response.status_code} {response.text}")

    threads = [threading.Thread(target=load) for _ in range(4)]
    for thread in threads:
        thread.start()
    try:
        wait_until(lambda: len(served) >= 20, 120, "20 reranks before the kill")
        pid = inspect(victim)["State"]["Pid"]
        docker("kill", victim)
        killed_at = len(served)
        # The kill is observed (the process is gone: the container exited, or its restart policy started a new
        # one), then the load goes on until 40 more requests were answered.
        wait_until(lambda: inspect(victim)["State"]["Pid"] != pid, 60, "the killed server's process to be gone")
        wait_until(lambda: len(served) >= killed_at + 40, 300, "40 reranks after the kill")
    finally:
        stop.set()
        for thread in threads:
            thread.join(150)
    assert not failures, f"{len(failures)} of {len(served) + len(failures)} failed: {failures[:5]}"


def test_down_leaves_nothing_behind(stack: Stack) -> None:
    before = stack.before
    compose("down", "-v", "--remove-orphans", "--timeout", "40")
    after = everything()
    for kind in ("containers", "networks", "volumes"):
        left = after[kind] - before[kind]
        assert not left, f"`down -v` left {kind}: {left}"

