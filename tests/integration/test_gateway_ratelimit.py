"""RateLimiter against in-process storage, the Redis test server, and Redis servers that go away."""

from __future__ import annotations

import asyncio
import logging
import random
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest

from rerankd.gateway.ratelimit import Decision, RateLimiter
from support import free_port

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


# -- requests per minute: exact in any 60 s span, Retry-After = the real wait ----------------------------


class FakeWallClock:
    """Stands in for the ``time`` module of the ``limits`` storage, which stamps moving-window entries
    with ``time.time()``: the test moves time instead of sleeping through a window."""

    def __init__(self, now: float) -> None:
        self.now = now

    def time(self) -> float:
        return self.now


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
async def clocked_limiter(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
                          ) -> AsyncIterator[tuple[RateLimiter, FakeWallClock]]:
    """A limiter (in-process or on the Redis test server) whose moving window runs on a fake wall clock."""
    from limits.aio.storage import memory
    from limits.aio.storage.redis import redispy

    clock = FakeWallClock(1_800_000_059.0)  # one second before a wall-clock minute boundary
    monkeypatch.setattr(memory if request.param == "memory" else redispy, "time", clock)
    url = None if request.param == "memory" else REDIS_URL
    limiter = RateLimiter(url, namespace=_namespace(), wall_clock=clock.time)
    yield limiter, clock
    await limiter.close()


async def test_rpm_admits_at_most_rpm_in_any_60_seconds(clocked_limiter: tuple[RateLimiter, FakeWallClock]) -> None:
    limiter, clock = clocked_limiter
    start = clock.now
    # The case: a 2-rpm key was admitted 3 times in 1.55 s across a minute boundary.
    assert (await limiter.check_request("k", 2)).allowed
    clock.now = start + 0.5
    assert (await limiter.check_request("k", 2)).allowed
    clock.now = start + 1.55
    denied = await limiter.check_request("k", 2)
    assert not denied.allowed and denied.remaining == 0
    real_wait = start + 60 - clock.now  # the first entry leaves the window then: 58.45 s
    assert denied.reset_after == pytest.approx(real_wait, abs=0.01)
    assert 0 <= denied.retry_after - real_wait < 1 and denied.headers()["Retry-After"] == "59"
    clock.now = start + 59.99
    assert not (await limiter.check_request("k", 2)).allowed  # still inside the first entry's 60 s
    clock.now = start + 60.01
    third = await limiter.check_request("k", 2)
    assert third.allowed and third.remaining == 0
    assert third.reset_after == pytest.approx(0.49, abs=0.01)  # the second entry leaves at start + 60.5
    clock.now = start + 60.2
    late = await limiter.check_request("k", 2)
    assert not late.allowed and late.retry_after == 1 and late.reset_after == pytest.approx(0.3, abs=0.01)


@pytest.mark.redis
async def test_redis_rpm_reset_is_the_oldest_entrys_expiry(limiters: list[RateLimiter]) -> None:
    """On real time: the reset a denial reports is when the oldest stored entry turns 60 s old."""
    import redis.asyncio as aioredis

    namespace = _namespace()
    limiter = RateLimiter(REDIS_URL, namespace=namespace)
    limiters.append(limiter)
    for _ in range(3):
        assert (await limiter.check_request("k", 3)).allowed
    denied = await limiter.check_request("k", 3)
    client = aioredis.Redis.from_url(REDIS_URL)
    try:
        [key] = [k async for k in client.scan_iter(match=f"*{namespace}*rpm*")]
        oldest = float(await client.lindex(key, -1))
    finally:
        await client.aclose()
    assert not denied.allowed
    assert denied.reset_after == pytest.approx(oldest + 60 - time.time(), abs=0.5)
    assert 0 <= denied.retry_after - denied.reset_after < 1


# -- tokens per minute: reserve, settle ---------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
async def token_limiter(request: pytest.FixtureRequest) -> AsyncIterator[RateLimiter]:
    limiter = RateLimiter(None if request.param == "memory" else REDIS_URL, namespace=_namespace())
    yield limiter
    await limiter.close()


async def test_tpm_reservation_denies_when_the_estimate_does_not_fit(token_limiter: RateLimiter) -> None:
    first = await token_limiter.reserve_tokens("k", 2000, 1200)
    assert first.allowed and first.tokens == 1200 and first.decision.remaining == 800
    denied = await token_limiter.reserve_tokens("k", 2000, 900)
    assert not denied.allowed and denied.tokens == 0 and denied.decision.remaining == 800  # nothing taken
    assert 1 <= denied.decision.retry_after <= 60
    headers = denied.decision.headers()
    assert headers["X-RateLimit-Remaining"] == "800" and "Retry-After" in headers
    fits = await token_limiter.reserve_tokens("k", 2000, 800)
    assert fits.allowed and fits.decision.remaining == 0
    never = await token_limiter.reserve_tokens("k", 2000, 2001)
    assert not never.allowed and never.decision.retry_after == 60


async def test_tpm_settle_refunds_and_charges(token_limiter: RateLimiter) -> None:
    high = await token_limiter.reserve_tokens("k", 2000, 1500)
    assert (await token_limiter.settle(high, 300)).remaining == 1700  # refunded 1200
    low = await token_limiter.reserve_tokens("k", 2000, 1000)
    assert low.decision.remaining == 700
    charged = await token_limiter.settle(low, 1500)  # the estimate was low: the excess is charged
    assert charged.allowed and charged.remaining == 200
    assert not (await token_limiter.reserve_tokens("k", 2000, 201)).allowed
    refunded = await token_limiter.settle(high, 0)  # settling to 0 frees the whole entry, never below
    assert refunded.remaining == 500
    failed = await token_limiter.reserve_tokens("k", 2000, 500)
    assert (await token_limiter.settle(failed, 0)).remaining == 500
    with pytest.raises(ValueError):
        await token_limiter.settle(failed, -1)


async def test_memory_token_window_retry_after_is_the_real_wait() -> None:
    from rerankd.gateway.token_window import MemoryTokenWindow

    clock = FakeClock()
    window = MemoryTokenWindow(60.0, clock)
    assert (await window.reserve("k", 1000, 600, "a")).allowed
    clock.now += 10
    assert (await window.reserve("k", 1000, 300, "b")).allowed
    clock.now += 10
    denied = await window.reserve("k", 1000, 500, "c")  # needs 400 more: "a" (600) must leave, at t0 + 60
    assert not denied.allowed and denied.used == 900 and denied.reset_after == pytest.approx(40.0)
    clock.now += 39.99
    assert not (await window.reserve("k", 1000, 500, "c")).allowed
    clock.now += 0.02
    after = await window.reserve("k", 1000, 500, "c")
    assert after.allowed and after.used == 800 and after.reset_after == pytest.approx(10.0 - 0.01)
    # Settling an entry that already left the window refunds nothing and charges only the excess.
    clock.now += 60
    assert (await window.settle("k", "b", 300, 250)).used == 0
    assert (await window.settle("k", "b", 300, 350)).used == 50


@pytest.mark.redis
async def test_redis_token_window_reset_follows_the_server_clock(limiters: list[RateLimiter]) -> None:
    import redis.asyncio as aioredis

    from rerankd.gateway.token_window import RedisTokenWindow

    client = aioredis.Redis.from_url(REDIS_URL)
    window = RedisTokenWindow(aioredis.Redis.from_url(REDIS_URL), 60.0)
    key = _namespace()
    try:
        assert (await window.reserve(key, 1000, 600, "a")).allowed
        assert (await window.reserve(key, 1000, 300, "b")).allowed
        denied = await window.reserve(key, 1000, 500, "c")
        seconds, micros = await client.time()
        made = float(await client.zscore("{" + key + "}:log", "a"))
        assert not denied.allowed and denied.used == 900
        assert denied.reset_after == pytest.approx((made + 60_000 - (seconds * 1000 + micros / 1000)) / 1000, abs=0.05)
        assert await client.pttl("{" + key + "}:total") > 60_000  # kept a window (and a second) past the last write
    finally:
        await window.close()
        await client.aclose()


@pytest.mark.redis
async def test_redis_parallel_reservations_across_two_limiters_never_exceed_tpm(limiters: list[RateLimiter]) -> None:
    namespace = _namespace()
    gateways = [RateLimiter(REDIS_URL, namespace=namespace) for _ in range(2)]
    limiters += gateways
    # The load: 12 parallel requests on a 2000 tokens/min key, through two gateways.
    first = await asyncio.gather(*(gateways[i % 2].reserve_tokens("k", 2000, 700) for i in range(12)))
    assert sum(r.allowed for r in first) == 2  # 2 * 700 <= 2000 < 3 * 700
    assert min(r.decision.remaining for r in first) == 600  # type: ignore[type-var]
    settled = await asyncio.gather(*(gateways[i % 2].settle(r, 300) for i, r in enumerate(first) if r.allowed))
    assert max(d.remaining for d in settled) == 1400  # type: ignore[type-var]
    # Under churn (reserve, settle for less, in parallel), the billed total never passes the limit.
    rng = random.Random(3)

    async def request(i: int) -> int:
        estimate = rng.randint(50, 900)
        reservation = await gateways[i % 2].reserve_tokens("k", 2000, estimate)
        if not reservation.allowed:
            return 0
        actual = rng.randint(0, estimate)
        await gateways[(i + 1) % 2].settle(reservation, actual)
        return actual

    billed = 600 + sum(await asyncio.gather(*(request(i) for i in range(200))))
    assert billed <= 2000
    final = await gateways[0].reserve_tokens("k", 2000, 0)
    assert final.decision.remaining == 2000 - billed  # the storage agrees with what was billed
    assert gateways[0].storage_errors == gateways[1].storage_errors == 0


async def test_reservations_without_storage_fail_open_or_closed(limiters: list[RateLimiter]) -> None:
    open_, closed = (RateLimiter(DEAD_URL, namespace=_namespace(), fail_open=f, retry_interval=0)
                     for f in (True, False))
    limiters += [open_, closed]
    granted = await open_.reserve_tokens("k", 100, 50)
    assert granted.allowed and granted.tokens == 0 and granted.decision.remaining is None
    assert (await open_.settle(granted, 80)).remaining is None  # nothing was held: nothing to settle
    assert open_.storage_errors == 1
    refused = await closed.reserve_tokens("k", 100, 50)
    assert not refused.allowed and refused.decision.retry_after == 1
    assert closed.storage_errors == 1
