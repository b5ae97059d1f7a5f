"""The upstream pool against real tiny HTTP servers on 127.0.0.1: health, balancing, breakers, DNS."""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AsyncExitStack, ExitStack
from dataclasses import dataclass

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from rerankd.gateway.breaker import BreakerState, CircuitBreaker
from rerankd.gateway.pool import UpstreamPool
from support import free_port, serving_in_thread

pytestmark = pytest.mark.timeout(60)

PoolFactory = Callable[..., Awaitable[UpstreamPool]]


@dataclass
class FakeReplica:
    """A minimal replica whose ``/ready`` answers 200 or 503 as ``ready`` says."""

    url: str
    port: int
    ready: bool = True


def _replica_app(replica: FakeReplica) -> Starlette:
    async def ready(request: Request) -> PlainTextResponse:
        return PlainTextResponse("ok", 200) if replica.ready else PlainTextResponse("not ready", 503)

    return Starlette(routes=[Route("/ready", ready)])


@pytest.fixture(scope="module")
def replicas() -> Iterator[list[FakeReplica]]:
    with ExitStack() as stack:
        started = []
        for _ in range(3):
            port = free_port()
            replica = FakeReplica(url=f"http://127.0.0.1:{port}", port=port)
            stack.enter_context(serving_in_thread(_replica_app(replica), port))
            started.append(replica)
        yield started


@pytest.fixture
def fresh(replicas: list[FakeReplica]) -> list[FakeReplica]:
    for r in replicas:
        r.ready = True
    return replicas


@pytest.fixture
async def open_pool() -> AsyncIterator[PoolFactory]:
    """Build and start pools that are closed after the test."""
    async with AsyncExitStack() as stack:

        async def make(urls: list[str], **kwargs: object) -> UpstreamPool:
            kwargs.setdefault("health_interval", 0.1)
            kwargs.setdefault("health_timeout", 1.0)
            pool = UpstreamPool(urls, **kwargs)  # type: ignore[arg-type]
            await pool.start()
            stack.push_async_callback(pool.close)
            return pool

        yield make


async def wait_for(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


async def test_health_check_ejects_a_503_replica_and_readmits_it(
    fresh: list[FakeReplica], open_pool: PoolFactory
) -> None:
    pool = await open_pool([r.url for r in fresh[:2]])
    up, down = fresh[:2]
    assert all(u.healthy for u in pool.upstreams)  # start() ran one round already
    down.ready = False
    await wait_for(lambda: not pool.upstreams[1].healthy)
    assert "503" in (pool.upstreams[1].last_error or "")
    assert {pool.pick().url for _ in range(50)} == {up.url}  # type: ignore[union-attr]
    down.ready = True
    await wait_for(lambda: pool.upstreams[1].healthy)
    assert {pool.pick().url for _ in range(50)} == {up.url, down.url}  # type: ignore[union-attr]


async def test_unreachable_replica_is_unhealthy(open_pool: PoolFactory) -> None:
    pool = await open_pool([f"http://127.0.0.1:{free_port()}"], health_timeout=0.5)
    assert not pool.upstreams[0].healthy
    assert pool.upstreams[0].last_error
    assert pool.pick() is None


async def test_p2c_prefers_fewer_outstanding(fresh: list[FakeReplica], open_pool: PoolFactory) -> None:
    pool = await open_pool([r.url for r in fresh], rng=random.Random(7))
    busy, medium, idle = pool.upstreams
    async with pool.lease(busy), pool.lease(busy), pool.lease(medium):
        assert (busy.outstanding, medium.outstanding, idle.outstanding) == (2, 1, 0)
        counts = Counter(pool.pick().url for _ in range(300))  # type: ignore[union-attr]
    assert counts[busy.url] == 0  # the most loaded one loses every pair it is drawn into
    assert counts[idle.url] > counts[medium.url] > 0
    assert busy.outstanding == medium.outstanding == 0


async def test_p2c_with_two_candidates_always_takes_the_less_loaded(
    fresh: list[FakeReplica], open_pool: PoolFactory
) -> None:
    pool = await open_pool([r.url for r in fresh[:2]], rng=random.Random(1))
    loaded, free = pool.upstreams
    async with pool.lease(loaded):
        assert {pool.pick().url for _ in range(50)} == {free.url}  # type: ignore[union-attr]


async def test_lease_releases_on_error(fresh: list[FakeReplica], open_pool: PoolFactory) -> None:
    pool = await open_pool([fresh[0].url])
    upstream = pool.upstreams[0]
    with pytest.raises(RuntimeError):
        async with pool.lease(upstream):
            assert upstream.outstanding == 1
            raise RuntimeError("upstream call failed")
    assert upstream.outstanding == 0


async def test_breaker_open_upstream_is_not_picked(fresh: list[FakeReplica], open_pool: PoolFactory) -> None:
    pool = await open_pool(
        [r.url for r in fresh[:2]], breaker_factory=lambda: CircuitBreaker(failure_threshold=2, open_seconds=60.0)
    )
    bad, good = pool.upstreams
    bad.breaker.record_failure()
    bad.breaker.record_failure()
    assert bad.breaker.state is BreakerState.OPEN and bad.healthy
    assert {pool.pick().url for _ in range(50)} == {good.url}  # type: ignore[union-attr]
    assert pool.pick(exclude={good.url}) is None
    snap = {s["url"]: s for s in pool.snapshot()}
    assert snap[bad.url]["breaker"] == "open" and snap[good.url]["breaker"] == "closed"


async def test_half_open_upstream_gets_one_probe_via_pick(fresh: list[FakeReplica], open_pool: PoolFactory) -> None:
    clock = [0.0]
    pool = await open_pool(
        [fresh[0].url],
        breaker_factory=lambda: CircuitBreaker(failure_threshold=1, open_seconds=1.0, clock=lambda: clock[0]),
    )
    upstream = pool.upstreams[0]
    upstream.breaker.record_failure()
    assert pool.pick() is None
    clock[0] = 1.0
    assert pool.pick() is upstream  # claims the probe
    assert upstream.breaker.state is BreakerState.HALF_OPEN
    assert pool.pick() is None
    upstream.breaker.record_success()
    assert pool.pick() is upstream and pool.pick() is upstream


async def test_exclude_skips_upstreams_already_tried(fresh: list[FakeReplica], open_pool: PoolFactory) -> None:
    pool = await open_pool([r.url for r in fresh])
    tried = {fresh[0].url, fresh[1].url}
    assert {pool.pick(exclude=tried).url for _ in range(30)} == {fresh[2].url}  # type: ignore[union-attr]
    assert pool.pick(exclude={r.url for r in fresh}) is None


async def test_pick_returns_none_when_all_are_down(fresh: list[FakeReplica], open_pool: PoolFactory) -> None:
    pool = await open_pool([r.url for r in fresh])
    for r in fresh:
        r.ready = False
    await wait_for(lambda: not any(u.healthy for u in pool.upstreams))
    assert pool.pick() is None
    assert all(not s["healthy"] for s in pool.snapshot())


async def test_dns_url_expands_to_one_upstream_per_address(fresh: list[FakeReplica], open_pool: PoolFactory) -> None:
    source = f"dns+http://localhost:{fresh[0].port}"
    pool = await open_pool([source, fresh[1].url])
    by_url = {u.url: u for u in pool.upstreams}
    local = f"http://127.0.0.1:{fresh[0].port}"
    assert local in by_url and fresh[1].url in by_url
    assert by_url[local].source == source and by_url[local].healthy
    assert all(u.source == source for u in pool.upstreams if u.url != fresh[1].url)
    # a refresh keeps the same objects, so breaker state and load survive re-resolution
    before = {u.url: u for u in pool.upstreams}
    await pool.refresh_dns()
    assert all(before[u.url] is u for u in pool.upstreams)
    assert {s["url"] for s in pool.snapshot()} == set(before)


async def test_failed_dns_lookup_keeps_the_pool_alive(fresh: list[FakeReplica], open_pool: PoolFactory) -> None:
    pool = await open_pool(["dns+http://no-such-host.invalid:8000", fresh[0].url], health_timeout=2.0)
    assert [u.url for u in pool.upstreams] == [fresh[0].url]
    assert pool.pick() is not None


@pytest.mark.parametrize("url", ["ftp://x:1", "dns+ftp://x:1", "dns+http://:80", "localhost:8000"])
def test_rejects_bad_urls(url: str) -> None:
    with pytest.raises(ValueError):
        UpstreamPool([url])
