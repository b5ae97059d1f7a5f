"""An exact sliding window of token reservations that can be settled later: the tokens-per-minute budget.

Why not the ``limits`` library here: its counters can add but not take back a reservation cleanly (a
sliding-window counter's bucket has moved on by the time a request settles, and its memory ``decr``
and Redis ``incrby`` know nothing of windows), and its moving window stores one entry per unit, which
for a budget of a million tokens is a million list entries.

What this keeps instead, per key: a log of the reservations made in the last window, each an id, a
time and a token count, and their running total. Admission adds an entry only if the total plus the new
amount fits the limit; settlement replaces an entry's amount with the real count (a refund when the
estimate was high, a charge when it was low, never below zero). Entries leave the log one window after
they were made, so at every admission the tokens counted for the last 60 s are at most the limit:
exact, with no window boundary. Memory is one entry per request in the last minute per key (as for
the requests-per-minute moving window); pruning is amortised O(1) per call.

Two implementations of one algorithm, behind :class:`TokenWindow`: :class:`MemoryTokenWindow` for one
process (no awaits inside an operation, so each is atomic on the event loop) and
:class:`RedisTokenWindow`, one Lua script per operation, atomic across every gateway sharing the Redis,
timed by the Redis server's clock (``TIME``) so gateways with skewed clocks still share one window.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

__all__ = ["MemoryTokenWindow", "RedisTokenWindow", "TokenWindow", "WindowState"]


@dataclass(frozen=True)
class WindowState:
    """The outcome of one operation: admitted or not, the tokens now counted, and when room frees.

    ``reset_after`` (seconds): when denied, until the denied amount fits, assuming nobody else spends
    meanwhile (a full window for an amount above the limit, which never fits); otherwise until the
    oldest entry leaves the window (0 when the log is empty).
    """

    allowed: bool
    used: int
    reset_after: float


class TokenWindow(Protocol):
    """Where reservations are kept. ``key`` names one key's budget at one limit."""

    async def reserve(self, key: str, limit: int, amount: int, entry_id: str) -> WindowState:
        """Add ``amount`` tokens under ``entry_id`` if they fit within ``limit``; a denial changes nothing."""

    async def settle(self, key: str, entry_id: str, reserved: int, actual: int) -> WindowState:
        """Replace the entry's ``reserved`` tokens with ``actual`` (a refund or a charge).

        An entry that already left the window is gone: nothing to refund, and only the excess of
        ``actual`` over ``reserved`` (if any) is charged, as a new entry.
        """

    async def close(self) -> None:
        """Release connections."""


@dataclass
class _Log:
    entries: OrderedDict[str, tuple[float, int]] = field(default_factory=OrderedDict)  # id -> (time, tokens)
    total: int = 0


class MemoryTokenWindow:
    """The algorithm in this process, timed by ``clock`` (monotonic by default; tests inject one)."""

    def __init__(self, window_seconds: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.window = window_seconds
        self._clock = clock
        self._logs: dict[str, _Log] = {}
        self._next_sweep = 0.0

    async def reserve(self, key: str, limit: int, amount: int, entry_id: str) -> WindowState:
        now = self._clock()
        log = self._log(key, now)
        if amount > limit:
            return WindowState(False, log.total, self.window)
        if log.total + amount > limit:
            return WindowState(False, log.total, self._wait_until_freed(log, log.total + amount - limit, now))
        if amount > 0:
            log.entries[entry_id] = (now, amount)
            log.total += amount
        return WindowState(True, log.total, self._oldest_leaves_in(log, now))

    async def settle(self, key: str, entry_id: str, reserved: int, actual: int) -> WindowState:
        now = self._clock()
        log = self._log(key, now)
        if entry_id in log.entries:
            made, tokens = log.entries[entry_id]
            log.total += actual - tokens
            if actual > 0:
                log.entries[entry_id] = (made, actual)
            else:
                del log.entries[entry_id]
        elif actual > reserved:
            log.entries[entry_id + "+"] = (now, actual - reserved)
            log.total += actual - reserved
        return WindowState(True, log.total, self._oldest_leaves_in(log, now))

    async def close(self) -> None:
        self._logs.clear()

    def _log(self, key: str, now: float) -> _Log:
        """The key's log without the entries that left the window; idle keys are swept once a window."""
        if now >= self._next_sweep:
            self._next_sweep = now + self.window
            for idle in [k for k, log in self._logs.items() if self._prune(log, now) == 0]:
                del self._logs[idle]
        log = self._logs.setdefault(key, _Log())
        self._prune(log, now)
        return log

    def _prune(self, log: _Log, now: float) -> int:
        horizon = now - self.window
        while log.entries:
            entry_id, (made, tokens) = next(iter(log.entries.items()))
            if made > horizon:
                break
            del log.entries[entry_id]
            log.total -= tokens
        return len(log.entries)

    def _oldest_leaves_in(self, log: _Log, now: float) -> float:
        if not log.entries:
            return 0.0
        made, _ = next(iter(log.entries.values()))
        return max(0.0, made + self.window - now)

    def _wait_until_freed(self, log: _Log, need: int, now: float) -> float:
        freed = 0
        for made, tokens in log.entries.values():
            freed += tokens
            if freed >= need:
                return max(0.0, made + self.window - now)
        return self.window  # unreachable while need <= total


# KEYS[1]: sorted set, entry id -> reservation time (ms, Redis clock); KEYS[2]: hash, entry id -> tokens;
# KEYS[3]: the sum of the hash. ARGV: op ("reserve" | "settle"), limit, window (ms), entry id, amount
# (reserve: the tokens asked for; settle: the real count), reserved (settle: what the entry held).
# Returns {allowed (1|0), tokens counted now, reset (ms)}; the same steps as MemoryTokenWindow.
_SCRIPT = """
if redis.replicate_commands then redis.replicate_commands() end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local op, limit, window = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local id, amount = ARGV[4], tonumber(ARGV[5])
local total = tonumber(redis.call('GET', KEYS[3]) or '0')

-- forget the entries that left the window, in bounded batches (unpack has a stack limit)
while true do
  local old = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now - window, 'LIMIT', 0, 1000)
  if #old == 0 then break end
  local costs = redis.call('HMGET', KEYS[2], unpack(old))
  for i = 1, #old do total = total - (tonumber(costs[i]) or 0) end
  redis.call('HDEL', KEYS[2], unpack(old))
  redis.call('ZREM', KEYS[1], unpack(old))
end

local function add(entry, tokens)
  redis.call('ZADD', KEYS[1], now, entry)
  redis.call('HSET', KEYS[2], entry, tokens)
  total = total + tokens
end

-- ms until the oldest entries holding `need` tokens have left the window
local function wait_for(need)
  local freed, start = 0, 0
  while true do
    local batch = redis.call('ZRANGE', KEYS[1], start, start + 99, 'WITHSCORES')
    if #batch == 0 then return window end
    local ids = {}
    for i = 1, #batch, 2 do ids[#ids + 1] = batch[i] end
    local costs = redis.call('HMGET', KEYS[2], unpack(ids))
    for i = 1, #ids do
      freed = freed + (tonumber(costs[i]) or 0)
      if freed >= need then return math.max(0, tonumber(batch[2 * i]) + window - now) end
    end
    start = start + 100
  end
end

local allowed, reset = 1, 0
if op == 'reserve' then
  if amount > limit then
    allowed, reset = 0, window
  elseif total + amount > limit then
    allowed, reset = 0, wait_for(total + amount - limit)
  elseif amount > 0 then
    add(id, amount)
  end
else
  local held = tonumber(redis.call('HGET', KEYS[2], id))
  local reserved = tonumber(ARGV[6])
  if held then
    total = total - held + amount
    if amount > 0 then
      redis.call('HSET', KEYS[2], id, amount)
    else
      redis.call('HDEL', KEYS[2], id)
      redis.call('ZREM', KEYS[1], id)
    end
  elseif amount > reserved then
    add(id .. '+', amount - reserved)
  end
end
if allowed == 1 then
  local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  if #oldest > 0 then reset = math.max(0, tonumber(oldest[2]) + window - now) end
end
if redis.call('ZCARD', KEYS[1]) > 0 then
  redis.call('SET', KEYS[3], total, 'PX', window + 1000)
  redis.call('PEXPIRE', KEYS[1], window + 1000)
  redis.call('PEXPIRE', KEYS[2], window + 1000)
else
  redis.call('DEL', KEYS[1], KEYS[2], KEYS[3])
end
return {allowed, total, reset}
"""


class RedisTokenWindow:
    """The algorithm in Redis, shared by every gateway pointed at it.

    ``client`` is a ``redis.asyncio.Redis``; its timeouts bound each call. The three keys of one budget
    share a hash tag, so the script also runs on a Redis Cluster.
    """

    def __init__(self, client: Any, window_seconds: float = 60.0) -> None:
        self._client = client
        self._window_ms = int(window_seconds * 1000)
        self._script = client.register_script(_SCRIPT)

    async def reserve(self, key: str, limit: int, amount: int, entry_id: str) -> WindowState:
        return await self._run(key, "reserve", limit, entry_id, amount, 0)

    async def settle(self, key: str, entry_id: str, reserved: int, actual: int) -> WindowState:
        return await self._run(key, "settle", 0, entry_id, actual, reserved)

    async def close(self) -> None:
        await self._client.aclose()  # the connections are the pool's owner's to close

    async def _run(self, key: str, op: str, limit: int, entry_id: str, amount: int, reserved: int) -> WindowState:
        tag = "{" + key + "}"
        allowed, used, reset_ms = await self._script(
            keys=[f"{tag}:log", f"{tag}:cost", f"{tag}:total"],
            args=[op, limit, self._window_ms, entry_id, amount, reserved])
        return WindowState(bool(allowed), int(used), int(reset_ms) / 1000)
