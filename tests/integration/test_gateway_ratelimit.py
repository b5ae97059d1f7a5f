"""RateLimiter against in-process storage, the Redis test server, and Redis servers that go away."""

from __future__ import annotations

import asyncio
import logging
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest

from rerankd.gateway.ratelimit import Decision, RateLimiter
from support import clear_of_a_minute_boundary, free_port

REDIS_URL = "redis://127.0.0.1:6379/0"
DEAD_URL = "redis://127.0.0.1:1/0"  # nothing listens on port 1


def _namespace() -> str:
    return f"test-{uuid.uuid4().hex}"


@pytest.fixture
async def limiters() -> AsyncIterator[list[RateLimiter]]:
    """Collects limiters made by a test and closes them afterwards."""
    made: list[RateLimiter] = []
    yield made
    for limiter in made:
        await limiter.close()


# -- in-process storage ------------------------------------------------------------------------
# In-process windows are aligned to wall-clock minutes, and just after a boundary the previous minute's
# count is weighted slightly below its full value, so a test that straddles one could see an extra unit.


@pytest.fixture(autouse=True)
def _away_from_minute_boundary(request: pytest.FixtureRequest) -> None:
    if request.node.get_closest_marker("redis") is None:
        clear_of_a_minute_boundary()


async def test_memory_rpm_denies_after_limit() -> None:
    limiter = RateLimiter(namespace=_namespace())
    decisions = [await limiter.check_request("key-a", 3) for _ in range(4)]
    assert [d.allowed for d in decisions] == [True, True, True, False]
    assert [d.remaining for d in decisions] == [2, 1, 0, 0]
    denied = decisions[-1]
    assert denied.limit == 3
    assert denied.retry_after >= 1
    assert 0 < denied.reset_after <= 120
    headers = denied.headers()
    assert headers["X-RateLimit-Limit"] == "3"
    assert headers["X-RateLimit-Remaining"] == "0"
    assert int(headers["X-RateLimit-Reset"]) >= 1
    assert int(headers["Retry-After"]) == denied.retry_after
    allowed_headers = decisions[0].headers()
    assert allowed_headers["X-RateLimit-Limit"] == "3"
    assert allowed_headers["X-RateLimit-Remaining"] == "2"
    assert "X-RateLimit-Reset" in allowed_headers
    assert "Retry-After" not in allowed_headers
    assert limiter.storage_errors == 0


async def test_memory_keys_are_independent() -> None:
    limiter = RateLimiter(namespace=_namespace())
    for _ in range(2):
        assert (await limiter.check_request("key-a", 2)).allowed
    assert not (await limiter.check_request("key-a", 2)).allowed
    assert (await limiter.check_request("key-b", 2)).allowed
    # The token budget of the same key is separate from its request budget.
    assert (await limiter.check_tokens("key-a", 100, 10)).allowed


async def test_memory_namespaces_are_independent() -> None:
    first, second = RateLimiter(namespace=_namespace()), RateLimiter(namespace=_namespace())
    assert (await first.check_request("k", 1)).allowed
    assert not (await first.check_request("k", 1)).allowed
    assert (await second.check_request("k", 1)).allowed


async def test_memory_tokens_cost() -> None:
    limiter = RateLimiter(namespace=_namespace())
    ok = await limiter.check_tokens("key-a", 100, 60)
    assert ok.allowed and ok.remaining == 40 and ok.limit == 100
    denied = await limiter.check_tokens("key-a", 100, 60)
    assert not denied.allowed
    assert denied.remaining == 40  # a denial consumes nothing
    assert denied.retry_after >= 1
    assert (await limiter.check_tokens("key-a", 100, 40)).allowed
    assert not (await limiter.check_tokens("key-a", 100, 1)).allowed


async def test_memory_cost_above_limit_never_fits() -> None:
    limiter = RateLimiter(namespace=_namespace())
    denied = await limiter.check_tokens("key-a", 100, 101)
    assert not denied.allowed
    assert denied.retry_after == 60
    assert (await limiter.check_tokens("key-a", 100, 100)).allowed


async def test_unlimited_and_zero_cost() -> None:
    limiter = RateLimiter(namespace=_namespace())
    for _ in range(50):
        decision = await limiter.check_request("key-a", None)
        assert decision.allowed
    assert decision == Decision(allowed=True, limit=None, remaining=None, reset_after=0.0, retry_after=0)
    assert decision.headers() == {}
    assert (await limiter.check_tokens("key-a", None, 10**9)).allowed
    zero = await limiter.check_tokens("key-a", 5, 0)
    assert zero.allowed and zero.remaining == 5


async def test_bad_arguments_are_rejected() -> None:
    limiter = RateLimiter(namespace=_namespace())
    with pytest.raises(ValueError):
        await limiter.check_request("key-a", 0)
    with pytest.raises(ValueError):
        await limiter.check_tokens("key-a", 10, -1)
    with pytest.raises(ValueError):
        RateLimiter("http://127.0.0.1:6379")


def test_denied_headers_without_remaining() -> None:
    decision = Decision(allowed=False, limit=7, remaining=None, reset_after=1.0, retry_after=1)
    assert decision.headers() == {"X-RateLimit-Limit": "7", "X-RateLimit-Reset": "1", "Retry-After": "1"}


# -- the shared Redis test server --------------------------------------------------------------


@pytest.mark.redis
async def test_redis_shared_across_instances(limiters: list[RateLimiter]) -> None:
    namespace = _namespace()
    first = RateLimiter(REDIS_URL, namespace=namespace)
    second = RateLimiter(REDIS_URL, namespace=namespace)
    limiters += [first, second]
    results = []
    for i in range(10):
        limiter = first if i % 2 == 0 else second
        results.append(await limiter.check_request("key-a", 5))
    assert sum(d.allowed for d in results) == 5
    assert [d.allowed for d in results[:5]] == [True] * 5
    assert results[4].remaining == 0
    assert all(d.retry_after >= 1 and d.remaining == 0 for d in results[5:])
    assert first.storage_errors == second.storage_errors == 0


@pytest.mark.redis
async def test_redis_concurrent_hits_are_atomic(limiters: list[RateLimiter]) -> None:
    namespace = _namespace()
    instances = [RateLimiter(REDIS_URL, namespace=namespace) for _ in range(3)]
    limiters += instances
    results = await asyncio.gather(*(instances[i % 3].check_tokens("key-a", 1000, 30) for i in range(60)))
    assert sum(d.allowed for d in results) == 33  # 33 * 30 = 990 <= 1000 < 34 * 30


@pytest.mark.redis
async def test_redis_tokens_and_keys(limiters: list[RateLimiter]) -> None:
    limiter = RateLimiter(REDIS_URL, namespace=_namespace())
    limiters.append(limiter)
    assert (await limiter.check_tokens("key-a", 100, 60)).allowed
    denied = await limiter.check_tokens("key-a", 100, 60)
    assert not denied.allowed and denied.remaining == 40 and denied.retry_after >= 1
    assert (await limiter.check_tokens("key-b", 100, 60)).allowed


# -- storage failures --------------------------------------------------------------------------


async def test_redis_down_fail_open(limiters: list[RateLimiter], caplog: pytest.LogCaptureFixture) -> None:
    limiter = RateLimiter(DEAD_URL, namespace=_namespace(), retry_interval=0)
    limiters.append(limiter)
    secret_key_id = "key-" + uuid.uuid4().hex
    with caplog.at_level(logging.WARNING, logger="rerankd.gateway.ratelimit"):
        for _ in range(3):
            decision = await limiter.check_request(secret_key_id, 1)
            assert decision.allowed and decision.limit == 1 and decision.remaining is None
        assert (await limiter.check_tokens(secret_key_id, 10, 1000)).allowed
    assert limiter.storage_errors == 4
    warnings = [r for r in caplog.records if r.name == "rerankd.gateway.ratelimit"]
    assert len(warnings) == 1  # at most one warning per 10 s
    assert secret_key_id not in caplog.text and "127.0.0.1:1" not in caplog.text


async def test_redis_down_fail_closed(limiters: list[RateLimiter]) -> None:
    limiter = RateLimiter(DEAD_URL, namespace=_namespace(), fail_open=False)
    limiters.append(limiter)
    for _ in range(2):
        decision = await limiter.check_request("key-a", 100)
        assert not decision.allowed and decision.retry_after == 1
        assert decision.headers()["Retry-After"] == "1"
    assert not (await limiter.check_tokens("key-a", 100, 1)).allowed
    assert limiter.storage_errors == 3
    # Unlimited keys need no storage, so they pass even then.
    assert (await limiter.check_request("key-a", None)).allowed


async def test_redis_down_skips_storage_for_retry_interval(limiters: list[RateLimiter]) -> None:
    now = [100.0]
    limiter = RateLimiter(DEAD_URL, namespace=_namespace(), retry_interval=5, clock=lambda: now[0])
    limiters.append(limiter)
    assert (await limiter.check_request("key-a", 1)).allowed
    started = time.monotonic()
    for _ in range(20):
        assert (await limiter.check_request("key-a", 1)).allowed
    assert time.monotonic() - started < 0.05  # decided without touching the network
    assert limiter.storage_errors == 21


@pytest.fixture
def private_redis() -> Iterator[tuple[str, list[subprocess.Popen[bytes]]]]:
    """A throw-away redis-server on a free port; the test may stop and restart it. Always killed at the end."""
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not on PATH")
    port = free_port()
    processes: list[subprocess.Popen[bytes]] = []
    try:
        yield f"redis://127.0.0.1:{port}/0", processes
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
            process.wait(timeout=10)


def _start_redis(url: str, processes: list[subprocess.Popen[bytes]]) -> subprocess.Popen[bytes]:
    port = int(url.rsplit(":", 1)[1].split("/")[0])
    process = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                "--appendonly", "no", "--daemonize", "no"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    processes.append(process)
    deadline = time.monotonic() + 10
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return process
        except OSError:
            if time.monotonic() > deadline or process.poll() is not None:
                raise RuntimeError("private redis-server did not start") from None
            time.sleep(0.05)


def _stop_redis(process: subprocess.Popen[bytes]) -> None:
    process.kill()
    process.wait(timeout=10)


@pytest.mark.redis
async def test_limiting_resumes_after_redis_returns(
    private_redis: tuple[str, list[subprocess.Popen[bytes]]], limiters: list[RateLimiter]
) -> None:
    url, processes = private_redis
    server = _start_redis(url, processes)
    limiter = RateLimiter(url, namespace=_namespace(), retry_interval=0)
    limiters.append(limiter)
    assert [(await limiter.check_request("key-a", 2)).allowed for _ in range(3)] == [True, True, False]

    _stop_redis(server)
    down = [await limiter.check_request("key-a", 2) for _ in range(3)]
    assert all(d.allowed and d.remaining is None for d in down)  # fail open
    errors_while_down = limiter.storage_errors
    assert errors_while_down == 3

    _start_redis(url, processes)  # a fresh, empty server (no persistence): counts start over
    back = [await limiter.check_request("key-a", 2) for _ in range(3)]
    assert [d.allowed for d in back] == [True, True, False]
    assert back[0].remaining == 1 and back[2].remaining == 0
    assert limiter.storage_errors == errors_while_down
