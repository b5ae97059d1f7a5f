"""Per-key rate limits for the gateway: requests per minute and tokens per minute.

Requests per minute: the ``limits`` library's moving window, which keeps the time of each admitted
request, so a key is never admitted more than ``rpm`` times in ANY 60 s span (a fixed or weighted
window lets a burst through at a minute boundary). ``Retry-After`` is when the oldest of those entries
leaves the window, which is exactly when the next request fits. The entries are stamped with each
gateway's wall clock, so across gateways the window is as exact as their clocks agree (NTP: ms).

Tokens per minute: a reservation, because a request's real token count is known only after the
replica answered. :meth:`RateLimiter.reserve_tokens` sets aside an upper bound of the request's tokens
(:mod:`rerankd.gateway.cost`) before it is forwarded, and admits it only if that fits;
:meth:`RateLimiter.settle` then replaces the reservation with the real count (refunding the
difference; a failed request refunds all). The budget is an exact sliding window
(:mod:`rerankd.gateway.token_window`): the tokens reserved in any 60 s span never exceed ``tpm``, and
since settlement only lowers a reservation that was an upper bound, neither do the tokens billed.

Why Redis: gateway replicas must share one budget per key, so with a ``redis://`` URL every replica
counts in the same Redis keys (each check-and-add is one Lua script, atomic across replicas); without
one the counts live in this process.

Why fail open by default: the limiter protects capacity, it is not an authorisation check, so an
outage of Redis should not take the whole gateway down with it. ``fail_open=False`` denies instead.
Either way a storage error is never raised to the caller, it is counted in ``storage_errors``.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from limits import RateLimitItemPerMinute
from limits.aio.strategies import MovingWindowRateLimiter
from limits.storage import storage_from_string

from rerankd.gateway.token_window import MemoryTokenWindow, RedisTokenWindow, TokenWindow, WindowState

__all__ = ["Decision", "RateLimiter", "Reservation"]

log = logging.getLogger(__name__)

WINDOW_SECONDS = 60
_WARN_INTERVAL = 10.0


@dataclass(frozen=True)
class Decision:
    """The outcome of one limit check, with what a client needs to know to back off.

    ``limit`` and ``remaining`` are None when the key has no such limit, and ``remaining`` is also None
    when the storage could not be asked. ``reset_after`` is the number of seconds until the window
    frees capacity (for a denial: enough capacity for the denied cost); ``retry_after`` is that rounded
    up to whole seconds, at least 1 when denied and 0 when allowed.
    """

    allowed: bool
    limit: int | None
    remaining: int | None
    reset_after: float
    retry_after: int

    def headers(self) -> dict[str, str]:
        """``X-RateLimit-*`` headers (none for an unlimited key), plus ``Retry-After`` when denied."""
        headers: dict[str, str] = {}
        if self.limit is not None:
            headers["X-RateLimit-Limit"] = str(self.limit)
            if self.remaining is not None:
                headers["X-RateLimit-Remaining"] = str(self.remaining)
            headers["X-RateLimit-Reset"] = str(math.ceil(self.reset_after))
        if not self.allowed:
            headers["Retry-After"] = str(max(1, self.retry_after))
        return headers


_UNLIMITED = Decision(allowed=True, limit=None, remaining=None, reset_after=0.0, retry_after=0)


@dataclass(frozen=True)
class Reservation:
    """Tokens set aside for one request until :meth:`RateLimiter.settle` replaces them with its real count.

    ``decision`` says whether the request may go (with ``remaining`` counted after this reservation).
    ``tokens`` is what is held in the storage: 0 when denied, unlimited, or decided without storage, in
    which case settling has nothing to do.
    """

    decision: Decision
    key_id: str
    tpm: int | None
    tokens: int
    entry_id: str

    @property
    def allowed(self) -> bool:
        return self.decision.allowed


def _async_storage_url(storage_url: str | None) -> str:
    """Map a user-facing URL (``redis://host:port/db``, ``memory://``) to the ``limits`` async scheme."""
    if storage_url is None or storage_url in ("", "memory://"):
        return "async+memory://"
    if storage_url.startswith("async+"):
        return storage_url
    if storage_url.startswith("unix://"):
        return "async+redis+unix://" + storage_url.removeprefix("unix://")
    if storage_url.startswith(("redis://", "rediss://", "redis+unix://")):
        return "async+" + storage_url
    raise ValueError("rate-limit storage must be a redis://, rediss:// or unix:// URL, or None for in-process")


def _redis_client_url(async_url: str) -> str:
    """The redis-py spelling of a ``limits`` async URL (``async+redis+unix://p`` is ``unix://p``)."""
    url = async_url.removeprefix("async+")
    return "unix://" + url.removeprefix("redis+unix://") if url.startswith("redis+unix://") else url


class RateLimiter:
    """Checks and consumes per-key budgets; one instance per gateway process, shared by all requests.

    Limits are per minute and are passed on each call (they come from the key's record), so a changed
    limit applies at once; counters are keyed by the limit too, so a changed limit starts a fresh count.
    """

    def __init__(
        self,
        storage_url: str | None = None,
        *,
        fail_open: bool = True,
        namespace: str = "rerankd",
        timeout: float = 0.5,
        retry_interval: float = 1.0,
        max_connections: int = 100,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        """Open the storage: in-process when ``storage_url`` is None, Redis for ``redis://host:port/db``.

        ``timeout`` bounds each Redis connect and command, so a hung Redis costs a request at most that.
        After a storage error the limiter decides without storage (per ``fail_open``) for
        ``retry_interval`` seconds before it tries again, so an outage does not add a timeout to every
        request. ``max_connections`` caps the Redis connections; a call waits for a free one up to
        ``timeout``. Nothing connects here; the first check does. ``clock`` times that pause and the
        in-process token window; ``wall_clock`` must be the clock the ``limits`` moving window stamps
        its entries with (``time.time``), to turn them into seconds to wait.
        """
        url = _async_storage_url(storage_url)
        self._tokens: TokenWindow
        self._pool: Any = None
        if url.startswith("async+memory"):
            self._storage = storage_from_string(url)
            self._tokens = MemoryTokenWindow(WINDOW_SECONDS, clock)
        else:
            from redis.asyncio import BlockingConnectionPool, Redis
            from redis.asyncio.retry import Retry
            from redis.backoff import NoBackoff

            # One pool for both strategies. A blocking one: under a burst, a command waits (up to
            # ``timeout``) for one of its connections instead of failing with "too many connections",
            # which would decide the request without storage. One immediate retry replaces a pooled
            # connection that died while Redis restarted; the client's default (several retries with
            # backoff up to seconds) would stall requests.
            self._pool = BlockingConnectionPool.from_url(
                _redis_client_url(url), max_connections=max_connections, timeout=timeout,
                socket_connect_timeout=timeout, socket_timeout=timeout, retry=Retry(NoBackoff(), 1))
            self._storage = storage_from_string(url, implementation="redispy", connection_pool=self._pool)
            self._tokens = RedisTokenWindow(Redis(connection_pool=self._pool), WINDOW_SECONDS)
        self._requests = MovingWindowRateLimiter(self._storage)
        self.fail_open = fail_open
        self.namespace = namespace
        self.retry_interval = retry_interval
        self.storage_errors = 0  # decisions made without the storage (failed, or skipped while it is down)
        self._clock = clock
        self._wall_clock = wall_clock
        self._last_warning: float | None = None
        self._skip_storage_until = 0.0

    async def check_request(self, key_id: str, rpm: int | None) -> Decision:
        """Consume one request from the key's requests-per-minute budget (None: unlimited).

        Denied once ``rpm`` requests were admitted in the last 60 s; ``reset_after`` is then the time
        until the oldest of them is 60 s old, when the next request fits.
        """
        if rpm is None:
            return _UNLIMITED
        _check_limit("rpm", rpm)
        item = RateLimitItemPerMinute(rpm)
        identifiers = (self.namespace, "rpm", key_id)

        async def hit() -> Decision:
            allowed = await self._requests.hit(item, *identifiers)
            # reset_time: when the oldest request in the window is 60 s old (now + 60 for an empty window).
            reset_time, remaining = await self._requests.get_window_stats(item, *identifiers)
            reset_after = max(0.0, reset_time - self._wall_clock()) if remaining < rpm else 0.0
            return _decision(allowed, rpm, remaining, reset_after)

        return await self._guarded(rpm, hit, lambda d: d)

    async def reserve_tokens(self, key_id: str, tpm: int | None, estimate: int) -> Reservation:
        """Set ``estimate`` tokens aside from the key's tokens-per-minute budget if they fit (None: unlimited).

        A denial reserves nothing; its ``reset_after`` is the time until the estimate fits, assuming
        nobody else spends meanwhile. An estimate above the whole limit can never fit: it is denied with
        ``reset_after`` of a full window, and the caller should rather reject such a request outright.
        """
        if estimate < 0:
            raise ValueError(f"tokens must be >= 0, got {estimate}")
        entry_id = uuid.uuid4().hex[:16]
        if tpm is None:
            return Reservation(_UNLIMITED, key_id, None, 0, entry_id)
        _check_limit("tpm", tpm)

        async def reserve() -> WindowState:
            return await self._tokens.reserve(self._token_key(key_id, tpm), tpm, estimate, entry_id)

        decision = await self._guarded(tpm, reserve, lambda state: _token_decision(state, tpm))
        held = estimate if decision.allowed and decision.remaining is not None else 0
        return Reservation(decision, key_id, tpm, held, entry_id)

    async def settle(self, reservation: Reservation, actual_tokens: int) -> Decision:
        """Replace a reservation with the request's real token count: refund what the estimate had too
        much, charge what it had too little (never below zero). Returns the budget after settlement.

        Settle every admitted reservation exactly once; a request that failed settles with 0.
        """
        if actual_tokens < 0:
            raise ValueError(f"tokens must be >= 0, got {actual_tokens}")
        tpm = reservation.tpm
        if tpm is None:
            return _UNLIMITED
        if not reservation.allowed or (reservation.tokens == 0 and actual_tokens == 0):
            return reservation.decision
        if reservation.decision.remaining is None:
            return reservation.decision  # decided without storage: nothing was held there

        async def settle() -> WindowState:
            return await self._tokens.settle(self._token_key(reservation.key_id, tpm), reservation.entry_id,
                                             reservation.tokens, actual_tokens)

        decision = await self._guarded(tpm, settle, lambda state: _token_decision(state, tpm))
        if not decision.allowed:  # fail-closed without storage: the request already ran; report, do not deny
            return Decision(allowed=True, limit=tpm, remaining=None, reset_after=0.0, retry_after=0)
        return decision

    async def check_tokens(self, key_id: str, tpm: int | None, tokens: int) -> Decision:
        """Consume ``tokens`` from the key's tokens-per-minute budget (None: unlimited); a reservation
        that is never settled. A denied call consumes nothing; a cost above the whole limit never fits
        (``retry_after`` of one window)."""
        return (await self.reserve_tokens(key_id, tpm, tokens)).decision

    async def close(self) -> None:
        """Release the Redis connections (a no-op for in-process storage)."""
        with contextlib.suppress(Exception):  # closing a dead connection must not fail shutdown
            await self._tokens.close()
        if self._pool is not None:
            with contextlib.suppress(Exception):
                await self._pool.disconnect()

    # -- internals -----------------------------------------------------------------------------

    def _token_key(self, key_id: str, tpm: int) -> str:
        return f"{self.namespace}/tpm/{key_id}/{tpm}"

    async def _guarded(self, limit: int, ask: Callable[[], Awaitable[Any]],
                       decide: Callable[[Any], Decision]) -> Decision:
        """Ask the storage, or decide without it (per ``fail_open``) when it fails or is paused."""
        if self._clock() < self._skip_storage_until:
            self.storage_errors += 1  # decided without storage, like the failure that started the pause
            return self._degraded(limit)
        try:
            answer = await ask()
        except Exception as exc:  # any storage failure (refused, timeout, script error) degrades, never raises
            return self._storage_failed(limit, exc)
        return decide(answer)

    def _storage_failed(self, limit: int, exc: Exception) -> Decision:
        self.storage_errors += 1
        now = self._clock()
        self._skip_storage_until = now + self.retry_interval
        if self._last_warning is None or now - self._last_warning >= _WARN_INTERVAL:
            self._last_warning = now
            # The exception type only: its text can carry the URL (with a password); never the key id.
            log.warning("rate-limit storage unavailable (%s); %s requests until it is back (%d errors so far)",
                        type(exc).__name__, "allowing" if self.fail_open else "denying", self.storage_errors)
        return self._degraded(limit)

    def _degraded(self, limit: int) -> Decision:
        if self.fail_open:
            return Decision(allowed=True, limit=limit, remaining=None, reset_after=0.0, retry_after=0)
        return Decision(allowed=False, limit=limit, remaining=None, reset_after=1.0, retry_after=1)


def _check_limit(kind: str, limit: int) -> None:
    if limit < 1:
        raise ValueError(f"{kind} must be a positive integer or None (unlimited), got {limit}")


def _decision(allowed: bool, limit: int, remaining: int, reset_after: float) -> Decision:
    """A Decision whose ``retry_after`` is ``reset_after`` rounded up (at least 1) when denied."""
    return Decision(allowed=allowed, limit=limit, remaining=max(0, remaining), reset_after=reset_after,
                    retry_after=0 if allowed else max(1, math.ceil(reset_after)))


def _token_decision(state: WindowState, tpm: int) -> Decision:
    return _decision(state.allowed, tpm, tpm - state.used, state.reset_after)
