"""Per-key rate limits for the gateway: requests per minute and tokens per minute.

Why the ``limits`` library's sliding-window counter: it keeps two integers per key and limit (this
minute's count and the last minute's), so a tokens-per-minute budget of a million costs the same as one
of ten, unlike a moving window that stores one entry per unit. It approximates a true sliding window by
weighting the previous minute, which smooths the burst a fixed window allows at a minute boundary.

Why Redis: gateway replicas must share one budget per key, so with a ``redis://`` URL every replica
counts in the same Redis keys (the check-and-increment is one Lua script, atomic across replicas);
without one the counts live in this process.

Why fail open by default: the limiter protects capacity, it is not an authorisation check, so an
outage of Redis should not take the whole gateway down with it. ``fail_open=False`` denies instead.
Either way a storage error is never raised to the caller, it is counted in ``storage_errors``.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from limits import RateLimitItem, RateLimitItemPerMinute
from limits.aio.strategies import SlidingWindowCounterRateLimiter
from limits.storage import storage_from_string

__all__ = ["Decision", "RateLimiter"]

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
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """Open the storage: in-process when ``storage_url`` is None, Redis for ``redis://host:port/db``.

        ``timeout`` bounds each Redis connect and command, so a hung Redis costs a request at most that.
        After a storage error the limiter decides without storage (per ``fail_open``) for
        ``retry_interval`` seconds before it tries again, so an outage does not add a timeout to every
        request. Nothing connects here; the first check does.
        """
        url = _async_storage_url(storage_url)
        options: dict[str, object] = {}
        if not url.startswith("async+memory"):
            from redis.asyncio.retry import Retry
            from redis.backoff import NoBackoff

            # One immediate retry replaces a pooled connection that died while Redis restarted; the
            # client's default (several retries with backoff up to seconds) would stall requests.
            options = {"implementation": "redispy", "socket_connect_timeout": timeout, "socket_timeout": timeout,
                       "retry": Retry(NoBackoff(), 1)}
        self._storage = storage_from_string(url, **options)  # type: ignore[arg-type]
        self._strategy = SlidingWindowCounterRateLimiter(self._storage)
        self.fail_open = fail_open
        self.namespace = namespace
        self.retry_interval = retry_interval
        self.storage_errors = 0  # decisions made without the storage (failed, or skipped while it is down)
        self._clock = clock
        self._last_warning: float | None = None
        self._skip_storage_until = 0.0

    async def check_request(self, key_id: str, rpm: int | None) -> Decision:
        """Consume one request from the key's requests-per-minute budget (None: unlimited)."""
        return await self._consume("rpm", key_id, rpm, 1)

    async def check_tokens(self, key_id: str, tpm: int | None, tokens: int) -> Decision:
        """Consume ``tokens`` from the key's tokens-per-minute budget (None: unlimited).

        A denied call consumes nothing. A cost above the whole limit can never pass; it is denied with
        ``retry_after`` of one window, and the caller should rather reject such a request outright.
        """
        if tokens < 0:
            raise ValueError(f"tokens must be >= 0, got {tokens}")
        return await self._consume("tpm", key_id, tpm, tokens)

    async def close(self) -> None:
        """Release the Redis connections (a no-op for in-process storage)."""
        bridge = getattr(self._storage, "bridge", None)
        client = getattr(bridge, "storage", None)
        if client is not None and hasattr(client, "aclose"):
            with contextlib.suppress(Exception):  # closing a dead connection must not fail shutdown
                await client.aclose()

    # -- internals -----------------------------------------------------------------------------

    async def _consume(self, kind: str, key_id: str, limit: int | None, cost: int) -> Decision:
        if limit is None:
            return _UNLIMITED
        if limit < 1:
            raise ValueError(f"{kind} must be a positive integer or None (unlimited), got {limit}")
        if self._clock() < self._skip_storage_until:
            self.storage_errors += 1  # decided without storage, like the failure that started the pause
            return self._degraded(limit)
        item = RateLimitItemPerMinute(limit)
        identifiers = (self.namespace, kind, key_id)
        try:
            allowed = True if cost == 0 else await self._strategy.hit(item, *identifiers, cost=cost)
            window = await self._storage.get_sliding_window(item.key_for(*identifiers), item.get_expiry())
        except Exception as exc:  # any storage failure (refused, timeout, script error) degrades, never raises
            return self._storage_failed(limit, exc)
        return _decide(item, allowed, cost, *window)

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


def _decide(item: RateLimitItem, allowed: bool, cost: int, previous_count: int, previous_ttl: float,
            current_count: int, current_ttl: float) -> Decision:
    """Turn the window's counters (read after the hit) into a Decision.

    The counters follow ``limits``' sliding-window counter: the weighted count is
    ``previous_count * previous_ttl / window + current_count``; the current window ends in
    ``current_ttl - window`` seconds, when its count becomes the previous one with a full window to fade.
    """
    limit, window = item.amount, float(item.get_expiry())
    weighted = previous_count * previous_ttl / window + current_count
    remaining = max(0, limit - math.floor(weighted))
    window_ends_in = max(0.0, current_ttl - window) if current_ttl > 0 else window
    if allowed:
        # When the next unit frees up: the previous minute's weight drops by one, or this minute ends.
        candidates = [window_ends_in] if current_count else []
        if previous_count:
            candidates.append(previous_ttl % (window / previous_count))
        reset_after = min(candidates) if candidates else 0.0
        return Decision(allowed=True, limit=limit, remaining=remaining, reset_after=reset_after, retry_after=0)
    reset_after = _wait_for(limit, window, cost, previous_count, previous_ttl, current_count, window_ends_in)
    return Decision(allowed=False, limit=limit, remaining=remaining, reset_after=reset_after,
                    retry_after=max(1, math.ceil(reset_after)))


def _wait_for(limit: int, window: float, cost: int, previous_count: int, previous_ttl: float,
              current_count: int, window_ends_in: float) -> float:
    """Seconds until ``cost`` more units fit, assuming nobody else spends meanwhile."""
    if cost > limit:
        return window  # never fits; tell the client to wait a full window rather than hammer
    room = limit - cost
    if current_count <= room:
        # Fits once the previous minute's weight has faded enough: P * (Tp - t) / W <= room - C.
        if not previous_count:
            return 1.0  # only reachable through a race with another replica; retry shortly
        return max(0.0, previous_ttl - (room - current_count) * window / previous_count)
    # Not this minute: wait for it to end, then for its count (now weighted) to fade enough.
    return window_ends_in + window * (1.0 - room / current_count)
