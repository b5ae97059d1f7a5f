"""The gateway's set of inference replicas: who is up, and which one gets the next request.

Why: balancing, health and discovery belong together but apart from HTTP handling. The pool knows each
replica's active health (``GET /ready`` polled in the background), its passive health (a
:class:`~rerankd.gateway.breaker.CircuitBreaker` fed by the caller), and its load (requests in flight),
and answers one question: :meth:`UpstreamPool.pick`. Retries, splitting and proxying live elsewhere.

Discovery: a configured URL ``dns+http://name:port`` (or ``dns+https://``) stands for every address the
name resolves to, re-resolved on each health round, one :class:`Upstream` per address. That is how a
Kubernetes headless Service exposes its pods, so replicas come and go without a gateway restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import random
import socket
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import urlsplit

import httpx

from rerankd.gateway.breaker import CircuitBreaker

__all__ = ["ReplicaSet", "Upstream", "UpstreamPool"]

log = logging.getLogger(__name__)

_DNS_PREFIX = "dns+"


@dataclass(eq=False)
class Upstream:
    """One replica: its base URL and what the gateway knows about it right now.

    ``healthy`` comes from active checks and starts optimistic, so a pool is usable before the first
    check round; the breaker carries passive health. ``source`` is the configured URL this replica came
    from (a ``dns+`` URL for discovered replicas). ``last_error`` is the most recent failed check, kept
    after recovery so ``/admin`` can show why a replica flapped.
    """

    url: str
    breaker: CircuitBreaker
    source: str = ""
    outstanding: int = 0
    healthy: bool = True
    last_error: str | None = None

    @property
    def available(self) -> bool:
        """Healthy and not ejected by its breaker (does not claim a half-open probe)."""
        return self.healthy and self.breaker.can_attempt()


class ReplicaSet(Protocol):
    """What the metrics read of a pool, or of every pool together (:class:`~rerankd.gateway.pools.PoolSet`)."""

    @property
    def upstreams(self) -> list[Upstream]: ...

    def available_count(self) -> int: ...


@dataclass
class _Source:
    """A configured URL: static (one fixed upstream) or ``dns+`` (the upstreams its name resolves to)."""

    url: str
    dns: bool
    upstreams: list[Upstream] = field(default_factory=list)


class UpstreamPool:
    """Replicas with active health checks, DNS discovery and power-of-two-choices balancing.

    Single event loop: methods are not thread-safe, and :meth:`pick` has no ``await`` so two picks can
    never interleave.
    """

    def __init__(
        self,
        urls: Iterable[str],
        *,
        health_interval: float = 2.0,
        health_timeout: float = 1.0,
        breaker_factory: Callable[[], CircuitBreaker] = CircuitBreaker,
        rng: random.Random | None = None,
        ready_path: str = "/ready",
        on_new_upstream: Callable[[Upstream], None] | None = None,
        on_gone_upstream: Callable[[Upstream], None] | None = None,
    ) -> None:
        """``on_new_upstream`` sees every upstream as it joins (configured or discovered): the gateway
        hooks its breaker transitions to metrics there. ``on_gone_upstream`` sees each discovered one that
        DNS no longer lists (its labelled series go with it: pod addresses churn without bound)."""
        self._on_new_upstream = on_new_upstream
        self._on_gone_upstream = on_gone_upstream
        self.health_interval = health_interval
        self.health_timeout = health_timeout
        self.ready_path = ready_path
        self._breaker_factory = breaker_factory
        self._rng = rng if rng is not None else random.Random()
        self._sources: list[_Source] = []
        for raw in urls:
            url = raw.rstrip("/")
            if url.startswith(_DNS_PREFIX):
                parts = urlsplit(url[len(_DNS_PREFIX) :])
                if parts.scheme not in ("http", "https") or not parts.hostname:
                    raise ValueError(f"bad upstream URL {raw!r}: want dns+http://name:port")
                self._sources.append(_Source(url, dns=True))
            else:
                if urlsplit(url).scheme not in ("http", "https"):
                    raise ValueError(f"bad upstream URL {raw!r}: want http(s)://host:port")
                self._sources.append(_Source(url, dns=False, upstreams=[self._new_upstream(url, url)]))
        if not self._sources:
            raise ValueError("an upstream pool needs at least one URL")
        self._client: httpx.AsyncClient | None = None
        self._task: asyncio.Task[None] | None = None

    # -- membership ----------------------------------------------------------------------------

    @property
    def upstreams(self) -> list[Upstream]:
        """Every current upstream, in configuration order (discovered ones in resolver order)."""
        return [u for s in self._sources for u in s.upstreams]

    def available_count(self) -> int:
        """Upstreams that could take a request now (healthy, breaker not open)."""
        return sum(1 for u in self.upstreams if u.available)

    def _new_upstream(self, url: str, source: str) -> Upstream:
        upstream = Upstream(url=url, breaker=self._breaker_factory(), source=source)
        if self._on_new_upstream is not None:
            self._on_new_upstream(upstream)
        return upstream

    async def refresh_dns(self) -> None:
        """Re-resolve every ``dns+`` URL to all its addresses (A and AAAA), one upstream per address.

        Upstreams whose address is still there keep their object (breaker, load and health carry on);
        new addresses get a fresh upstream; gone ones are dropped. A failed lookup keeps the previous
        set: a DNS hiccup must not empty the pool.
        """
        loop = asyncio.get_running_loop()
        for source in (s for s in self._sources if s.dns):
            parts = urlsplit(source.url[len(_DNS_PREFIX) :])
            port = parts.port or (443 if parts.scheme == "https" else 80)
            try:
                infos = await asyncio.wait_for(
                    loop.getaddrinfo(parts.hostname, port, type=socket.SOCK_STREAM), self.health_timeout
                )
            except (OSError, asyncio.TimeoutError) as exc:
                log.warning(
                    "DNS lookup for %s failed, keeping %d upstreams: %s", source.url, len(source.upstreams), exc
                )
                continue
            addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
            known = {u.url: u for u in source.upstreams}
            fresh: list[Upstream] = []
            for address in addresses:
                url = f"{parts.scheme}://{_host_for_url(address)}:{port}{parts.path}"
                fresh.append(known.get(url) or self._new_upstream(url, source.url))
            if [u.url for u in fresh] != [u.url for u in source.upstreams]:
                log.info("upstreams for %s: %s", source.url, [u.url for u in fresh])
            kept = {u.url for u in fresh}
            gone = [u for u in source.upstreams if u.url not in kept]
            source.upstreams = fresh
            if self._on_gone_upstream is not None:
                for upstream in gone:
                    self._on_gone_upstream(upstream)

    # -- balancing -----------------------------------------------------------------------------

    def pick(self, exclude: frozenset[str] | set[str] = frozenset()) -> Upstream | None:
        """Choose the upstream for the next request, or None when no upstream can take one.

        Candidates are healthy, allowed by their breaker and not in ``exclude`` (URLs already tried by
        this request). Of two random candidates the one with fewer requests in flight wins: nearly as
        good as least-outstanding over all replicas, without herding every gateway onto the same one.
        The chosen upstream's breaker is asked :meth:`~CircuitBreaker.allow_request`, so a pick may
        claim a half-open probe; the caller must record the outcome on ``upstream.breaker``.
        """
        candidates = [u for u in self.upstreams if u.url not in exclude and u.available]
        if not candidates:
            return None
        if len(candidates) == 1:
            chosen = candidates[0]
        else:
            first, second = self._rng.sample(candidates, 2)
            chosen = second if second.outstanding < first.outstanding else first
        if not chosen.breaker.allow_request():  # cannot happen without an await in between; be safe
            return None
        return chosen

    @contextlib.asynccontextmanager
    async def lease(self, upstream: Upstream) -> AsyncIterator[Upstream]:
        """Count a request as in flight on ``upstream`` for the duration of the block."""
        upstream.outstanding += 1
        try:
            yield upstream
        finally:
            upstream.outstanding -= 1

    # -- active health -------------------------------------------------------------------------

    async def start(self) -> None:
        """Resolve DNS and check every upstream once, then keep doing so in the background."""
        if self._task is not None:
            return
        self._client = httpx.AsyncClient(timeout=self.health_timeout, trust_env=False)
        await self.check_once()
        self._task = asyncio.create_task(self._health_loop(), name="rerankd-upstream-health")

    async def close(self) -> None:
        """Stop the background checks and release the HTTP client."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    async def check_once(self) -> None:
        """One health round: refresh DNS, then probe every upstream's ready path concurrently."""
        await self.refresh_dns()
        await asyncio.gather(*(self._check(u) for u in self.upstreams))

    async def _health_loop(self) -> None:
        while True:
            await asyncio.sleep(self.health_interval)
            try:
                await self.check_once()
            except Exception:  # the loop must outlive any one bad round
                log.exception("upstream health round failed")

    async def _check(self, upstream: Upstream) -> None:
        if self._client is None:
            return
        error: str | None = None
        try:
            response = await self._client.get(upstream.url + self.ready_path)
            if response.status_code != 200:
                error = f"GET {self.ready_path} returned {response.status_code}"
        except httpx.HTTPError as exc:
            error = f"GET {self.ready_path} failed: {type(exc).__name__}: {exc}"
        healthy = error is None
        if healthy != upstream.healthy:
            log.log(
                logging.INFO if healthy else logging.WARNING,
                "upstream %s is now %s%s",
                upstream.url,
                "healthy" if healthy else "unhealthy",
                "" if healthy else f" ({error})",
            )
        upstream.healthy = healthy
        if error is not None:
            upstream.last_error = error

    # -- introspection -------------------------------------------------------------------------

    def snapshot(self) -> list[dict[str, Any]]:
        """Each upstream's state as plain data, for ``/admin``."""
        return [
            {
                "url": u.url,
                "source": u.source,
                "healthy": u.healthy,
                "breaker": u.breaker.state.value,
                "outstanding": u.outstanding,
                "last_error": u.last_error,
            }
            for u in self.upstreams
        ]


def _host_for_url(address: str) -> str:
    """Bracket IPv6 literals (percent-encoding a zone id's ``%``) for use in a URL."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return address
    return f"[{address.replace('%', '%25')}]" if ip.version == 6 else address
