"""Per-key limits through real gateways: one shared budget across two gateway processes on a real Redis,
serving on when that Redis dies, and tokens per minute charged from the replicas' real token counts."""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from rerankd.gateway.settings import GatewaySettings
from support import Fleet, clear_of_a_minute_boundary, free_port, running_gateway, spawn_gateway

pytestmark = [pytest.mark.timeout(180), pytest.mark.redis]

ADMIN = "limits-admin"
BODY = {"query": "limits", "documents": ["one", "two"]}


@pytest.fixture
def private_redis() -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """A Redis server of this test's own, so stopping it cannot disturb anything else."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed")
    port = free_port()
    proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while subprocess.run(["redis-cli", "-p", str(port), "ping"], capture_output=True).stdout.strip() != b"PONG":
        assert time.monotonic() < deadline, "private redis did not start"
        time.sleep(0.05)
    try:
        yield f"redis://127.0.0.1:{port}/0", proc
    finally:
        proc.kill()
        proc.wait(10)


def test_two_gateways_share_one_limit_and_serve_on_without_redis(
        fleet: Fleet, tmp_path: Path, private_redis: tuple[str, subprocess.Popen[bytes]]) -> None:
    redis_url, redis = private_redis
    common = ["--database-url", f"sqlite:///{tmp_path / 'shared.db'}", "--redis-url", redis_url,
              "--admin-key", ADMIN]
    gateways = [spawn_gateway(tmp_path, fleet.urls, *common) for _ in range(2)]
    try:
        urls = [g.wait_ready().url for g in gateways]
        created = httpx.post(f"{urls[0]}/admin/keys", json={"name": "shared", "rpm": 10},
                             headers={"Authorization": f"Bearer {ADMIN}"})
        auth = {"Authorization": f"Bearer {created.json()['key']}"}
        replies = [httpx.post(f"{urls[i % 2]}/v1/rerank", json=BODY, headers=auth, timeout=30) for i in range(14)]
        statuses = [r.status_code for r in replies]
        assert statuses.count(200) == 10 and statuses.count(429) == 4, statuses
        assert {r.url.host for r in replies} == {"127.0.0.1"}
        limited = next(r for r in replies if r.status_code == 429)
        assert limited.headers["x-ratelimit-limit"] == "10"
        assert limited.headers["x-ratelimit-remaining"] == "0"
        assert 1 <= int(limited.headers["retry-after"]) <= 120  # sliding window: up to two windows
        assert "10 requests per minute" in limited.json()["error"]["message"]
        assert any(r.status_code == 429 for r in replies[0::2]) and any(r.status_code == 429 for r in replies[1::2])

        redis.send_signal(signal.SIGKILL)
        redis.wait(10)
        after = [httpx.post(f"{urls[i % 2]}/v1/rerank", json=BODY, headers=auth, timeout=30) for i in range(6)]
        assert [r.status_code for r in after] == [200] * 6  # fail-open: served without limits
        for url in urls:
            metrics = httpx.get(f"{url}/metrics").text
            errors = re.search(r"^rerankd_gateway_ratelimit_storage_errors_total (\S+)$", metrics, re.M)
            assert errors and float(errors.group(1)) >= 1
            assert httpx.get(f"{url}/ready").status_code == 200
    finally:
        for g in gateways:
            g.stop()


def test_fail_closed_answers_429_while_redis_is_unreachable(fleet: Fleet, tmp_path: Path) -> None:
    dead_redis = f"redis://127.0.0.1:{free_port()}/0"
    settings = GatewaySettings(upstreams=[fleet.urls[0]], database_url=f"sqlite:///{tmp_path / 'gw.db'}",
                               admin_key=ADMIN, redis_url=dead_redis, ratelimit_fail_open=False)
    with running_gateway(settings) as url:
        key = httpx.post(f"{url}/admin/keys", json={"name": "closed", "rpm": 100},
                         headers={"Authorization": f"Bearer {ADMIN}"}).json()["key"]
        response = httpx.post(f"{url}/v1/rerank", json=BODY, headers={"Authorization": f"Bearer {key}"})
        assert response.status_code == 429 and response.headers["retry-after"] == "1"


def test_tokens_per_minute_are_charged_from_real_usage(fleet: Fleet, tmp_path: Path) -> None:
    settings = GatewaySettings(upstreams=[fleet.urls[0]], database_url=f"sqlite:///{tmp_path / 'gw.db'}",
                               admin_key=ADMIN)
    with running_gateway(settings) as url:
        tokens_per_request = httpx.post(f"{fleet.urls[0]}/v1/rerank", json=BODY).json()["usage"]["prompt_tokens"]
        tpm = int(tokens_per_request * 2.5)
        key = httpx.post(f"{url}/admin/keys", json={"name": "tokens", "tpm": tpm},
                         headers={"Authorization": f"Bearer {ADMIN}"}).json()["key"]
        auth = {"Authorization": f"Bearer {key}"}
        clear_of_a_minute_boundary()  # this gateway's limiter is in-process: wall-clock minute windows
        replies = [httpx.post(f"{url}/v1/rerank", json=BODY, headers=auth) for _ in range(4)]
        # Admitted while budget is left: 2.5 requests' worth admits three (the third overshoots), not four.
        assert [r.status_code for r in replies] == [200, 200, 200, 429]
        assert replies[0].headers["x-ratelimit-limit-tokens"] == str(tpm)
        assert replies[1].headers["x-ratelimit-remaining-tokens"] == str(tpm - tokens_per_request)
        assert "token limit" in replies[3].json()["error"]["message"]
        assert int(replies[3].headers["retry-after"]) >= 1
        metrics = httpx.get(f"{url}/metrics").text
        assert 'rerankd_gateway_rate_limited_total{limit="tokens"} 1.0' in metrics
        assert f'rerankd_gateway_key_tokens_total{{key="tokens"}} {3 * tokens_per_request}.0' in metrics
