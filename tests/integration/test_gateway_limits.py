"""Per-key limits through real gateways: one shared budget across two gateway processes on a real Redis,
serving on when that Redis dies, and tokens per minute charged from the replicas' real token counts."""

from __future__ import annotations

import asyncio
import contextlib
import re
import shutil
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from rerankd.gateway.cost import estimate_prompt_tokens, scoring_tasks
from rerankd.gateway.settings import GatewaySettings
from rerankd.protocol import RerankRequest
from support import Fleet, clear_of_a_minute_boundary, free_port, running_gateway, serving_in_thread, spawn_gateway

pytestmark = [pytest.mark.timeout(180), pytest.mark.redis]

METRICS_TOKEN = "limits-test-metrics-token"  # per-key series are named only to a scrape holding it
ADMIN = "limits-admin"
REDIS_URL = "redis://127.0.0.1:6379/0"
BODY = {"query": "limits", "documents": ["one", "two"]}


def wait_until(condition: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.02)


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
                               admin_key=ADMIN, metrics_token=METRICS_TOKEN)
    with running_gateway(settings) as url:
        tokens_per_request = httpx.post(f"{fleet.urls[0]}/v1/rerank", json=BODY).json()["usage"]["prompt_tokens"]
        estimate = estimate_prompt_tokens(scoring_tasks(RerankRequest.model_validate(BODY)),
                                          settings.upstream_max_model_len)
        assert tokens_per_request < estimate
        # Admission reserves the estimate and settles to the real count: two requests settled plus one
        # estimate fit exactly, so three are admitted and the fourth is not (nothing overshoots).
        tpm = 2 * tokens_per_request + estimate
        key = httpx.post(f"{url}/admin/keys", json={"name": "tokens", "tpm": tpm},
                         headers={"Authorization": f"Bearer {ADMIN}"}).json()["key"]
        auth = {"Authorization": f"Bearer {key}"}
        clear_of_a_minute_boundary()  # this gateway's limiter is in-process: wall-clock minute windows
        replies = [httpx.post(f"{url}/v1/rerank", json=BODY, headers=auth) for _ in range(4)]
        assert [r.status_code for r in replies] == [200, 200, 200, 429]
        assert replies[0].headers["x-ratelimit-limit-tokens"] == str(tpm)
        # Remaining after this request's settlement: the real counts, not the estimates.
        assert replies[1].headers["x-ratelimit-remaining-tokens"] == str(tpm - 2 * tokens_per_request)
        assert replies[2].headers["x-ratelimit-remaining-tokens"] == str(tpm - 3 * tokens_per_request)
        assert "token limit" in replies[3].json()["error"]["message"]
        assert int(replies[3].headers["retry-after"]) >= 1
        metrics = httpx.get(f"{url}/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"}).text
        assert 'rerankd_gateway_rate_limited_total{limit="tokens"} 1.0' in metrics
        assert f'rerankd_gateway_key_tokens_total{{key="tokens",task="rerank"}} {3 * tokens_per_request}.0' in metrics


# -- tokens per minute under parallel load, through real gateways in front of a fake replica ---------------

REPORTED_TOKENS = 100  # what the fake replica bills for every request: less than any request's estimate
PARALLEL_BODY = {"query": "what does the budget admit?", "documents": ["a document of some length " * 12]}


class HoldingReplica:
    """A replica that bills ``REPORTED_TOKENS`` per request and holds every request until ``release``;
    a query of "fail" is answered 400 at once (a failed request, which must refund its reservation)."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.arrived = 0

        async def rerank(request: Request) -> Response:
            body = await request.json()
            if body["query"] == "fail":
                return JSONResponse({"error": {"message": "refused"}}, status_code=400)
            self.arrived += 1
            await asyncio.to_thread(self.release.wait, 60)
            return JSONResponse({"id": "x", "model": "fake", "results": [{"index": 0, "relevance_score": 0.5}],
                                 "usage": {"prompt_tokens": REPORTED_TOKENS, "total_tokens": REPORTED_TOKENS}})

        async def ready(request: Request) -> Response:
            return JSONResponse({"status": "ready"})

        self.app = Starlette(routes=[Route("/v1/rerank", rerank, methods=["POST"]), Route("/ready", ready)])


@pytest.mark.parametrize("gateways", [1, 2], ids=["one-gateway", "two-gateways-on-redis"])
def test_parallel_requests_never_overshoot_tokens_per_minute(tmp_path: Path, gateways: int) -> None:
    tpm = 2000
    estimate = estimate_prompt_tokens(scoring_tasks(RerankRequest.model_validate(PARALLEL_BODY)), 32768)
    fits = tpm // estimate  # 4
    assert 1 <= fits < 12 and fits * REPORTED_TOKENS <= tpm
    replica = HoldingReplica()
    namespace = f"test-{uuid.uuid4().hex}"  # a fresh budget in the shared Redis
    with contextlib.ExitStack() as stack:
        upstream = stack.enter_context(serving_in_thread(replica.app, free_port(), what="fake replica"))
        settings = GatewaySettings(upstreams=[upstream], database_url=f"sqlite:///{tmp_path / 'gw.db'}",
                                   admin_key=ADMIN, redis_url=REDIS_URL if gateways == 2 else None)
        urls = [stack.enter_context(running_gateway(settings)) for _ in range(gateways)]
        for url in urls:  # the fake replica must pass a health check before the gateway sends to it
            wait_until(lambda u=url: httpx.get(f"{u}/ready").status_code == 200)
        key = httpx.post(f"{urls[0]}/admin/keys", json={"name": namespace, "tpm": tpm},
                         headers={"Authorization": f"Bearer {ADMIN}"}).json()["key"]
        auth = {"Authorization": f"Bearer {key}"}

        with ThreadPoolExecutor(12) as pool:
            futures = [pool.submit(httpx.post, f"{urls[i % gateways]}/v1/rerank", json=PARALLEL_BODY,
                                   headers=auth, timeout=60) for i in range(12)]
            # The denied come back at once; the admitted are held by the replica until all are in.
            wait_until(lambda: sum(f.done() for f in futures) == 12 - fits and replica.arrived == fits)
            replica.release.set()
            replies = [f.result() for f in futures]
        statuses = [r.status_code for r in replies]
        assert statuses.count(200) == fits and statuses.count(429) == 12 - fits, statuses
        denied = next(r for r in replies if r.status_code == 429)
        assert "token limit of 2000 tokens per minute" in denied.json()["error"]["message"]
        # While the admitted were in flight, their estimates were held: honest remaining at the denial.
        assert int(denied.headers["x-ratelimit-remaining-tokens"]) == tpm - fits * estimate
        assert int(denied.headers["retry-after"]) >= 1

        # Settled to what the replica billed: the estimates are refunded down to the real count (each
        # answer says what was left at its settlement; the last one settled sees every refund).
        left = tpm - fits * REPORTED_TOKENS
        assert max(int(r.headers["x-ratelimit-remaining-tokens"]) for r in replies if r.status_code == 200) == left
        failed = httpx.post(f"{urls[-1]}/v1/rerank", json={**PARALLEL_BODY, "query": "fail"}, headers=auth)
        assert failed.status_code == 400
        replica.release.set()
        after = httpx.post(f"{urls[0]}/v1/rerank", json=PARALLEL_BODY, headers=auth, timeout=60)
        assert after.status_code == 200, after.text  # the failed request refunded its whole reservation
        assert after.headers["x-ratelimit-remaining-tokens"] == str(left - REPORTED_TOKENS)


def test_a_request_that_can_never_fit_is_413_naming_the_limit(tmp_path: Path) -> None:
    replica = HoldingReplica()
    replica.release.set()
    with serving_in_thread(replica.app, free_port(), what="fake replica") as upstream:
        settings = GatewaySettings(upstreams=[upstream], database_url=f"sqlite:///{tmp_path / 'gw.db'}",
                                   admin_key=ADMIN)
        with running_gateway(settings) as url:
            wait_until(lambda: httpx.get(f"{url}/ready").status_code == 200)
            key = httpx.post(f"{url}/admin/keys", json={"name": "small", "tpm": 2000, "rpm": 2},
                             headers={"Authorization": f"Bearer {ADMIN}"}).json()["key"]
            auth = {"Authorization": f"Bearer {key}"}
            big = {"query": "q", "documents": ["x" * 80_000]}  # the 78,272-token request
            too_big = httpx.post(f"{url}/v1/rerank", json=big, headers=auth)
            assert too_big.status_code == 413
            message = too_big.json()["error"]["message"]
            assert "2000 tokens per minute" in message and "max_tokens_per_doc" in message
            assert replica.arrived == 0
            # Capping each document makes it fit. The 413 spent one of the key's two requests a minute (work the
            # gateway did: oversized requests are not free), so after the capped one the key is out of requests.
            capped = httpx.post(f"{url}/v1/rerank", json={**big, "max_tokens_per_doc": 1000}, headers=auth)
            assert capped.status_code == 200, capped.text
            assert capped.headers["X-RateLimit-Remaining"] == "0"
