"""Sending one request to the fleet: pick a replica, try, and fail over to another within a budget.

Why retries are safe here: scoring is a pure function of the request, so an attempt that failed or
timed out can be sent again to another replica without side effects. Why a retry *budget*: when the
whole fleet is sick, every request retrying multiplies the load exactly when capacity is lowest; the
budget (a share of recent requests, plus a small floor) keeps retries from turning an incident into an
outage.

Outcomes of one attempt and what they mean for the replica's circuit breaker:

- 2xx, 4xx (except 429): the replica works; its answer is final (a 4xx is the client's fault).
- 429 / 503 from the replica: it is busy or not ready; try another, but the breaker is not charged
  (active health checks catch a replica that stays unready).
- 5xx, connection errors, timeouts: the replica failed; the breaker is charged and another is tried.
- an answer longer than ``max_answer_bytes``: read no further and answer 502 (``upstream_malformed``).
  Not retried, and the breaker is not charged: scoring is deterministic, so another replica would send
  the same oversized answer (it is the request's size, e.g. ``return_documents`` over huge texts).

Every answer is read with that byte cap, streaming, so one replica (or whatever sits in front of it)
cannot make the gateway buffer hundreds of megabytes. Error bodies are rebuilt by
:func:`~rerankd.gateway.answers.safe_error_body` before anyone sees them: a stack trace stays in the log.

Each attempt is a ``gateway.attempt`` client span (replica, attempt number, status, the retry reason), and its
``traceparent`` goes to the replica, so a retry is a sibling of the failed try in the trace.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from dataclasses import dataclass

import aiohttp

from rerankd.errors import UpstreamMalformedError, UpstreamUnavailableError
from rerankd.gateway.answers import safe_error_body
from rerankd.gateway.pool import Upstream, UpstreamPool
from rerankd.observability import tracing
from rerankd.observability.gateway_metrics import GatewayMetrics
from rerankd.protocol import TENANT_HEADER

__all__ = ["Forwarder", "RetryBudget", "UpstreamReply"]

log = logging.getLogger(__name__)

_BUSY = frozenset({429, 503})
_FORWARDED_HEADERS = ("retry-after", "x-prompt-tokens")
_CHUNK_BYTES = 256 * 1024


@dataclass
class UpstreamReply:
    """A final answer from one replica (any status the client should see as it is)."""

    status: int
    body: bytes
    headers: dict[str, str]
    upstream: str
    attempts: int


class RetryBudget:
    """Allows retries up to ``ratio`` × requests seen in the last ``window`` seconds, plus a floor.

    A sliding log of timestamps is plenty at gateway rates (thousands per second at most) and keeps
    the rule exact; both deques are trimmed on every call.
    """

    def __init__(self, ratio: float = 0.2, min_per_second: float = 10.0, window: float = 10.0) -> None:
        self.ratio = ratio
        self.min_per_second = min_per_second
        self.window = window
        self._requests: deque[float] = deque()
        self._retries: deque[float] = deque()

    def note_request(self) -> None:
        now = time.monotonic()
        self._requests.append(now)
        self._trim(now)

    def try_spend(self) -> bool:
        """Claim one retry if the budget allows it."""
        now = time.monotonic()
        self._trim(now)
        allowed = self.ratio * len(self._requests) + self.min_per_second * self.window
        if len(self._retries) + 1 > allowed:
            return False
        self._retries.append(now)
        return True

    def _trim(self, now: float) -> None:
        horizon = now - self.window
        for log_ in (self._requests, self._retries):
            while log_ and log_[0] < horizon:
                log_.popleft()


class Forwarder:
    """Sends a body to ``path`` on some replica, with failover; returns the first final answer."""

    def __init__(self, pool: UpstreamPool, client: aiohttp.ClientSession, metrics: GatewayMetrics, *,
                 attempt_timeout: float, total_timeout: float, max_attempts: int, budget: RetryBudget,
                 max_answer_bytes: int, upstream_api_key: str | None = None) -> None:
        self.pool = pool
        self.client = client
        self.metrics = metrics
        self.attempt_timeout = attempt_timeout
        self.total_timeout = total_timeout
        self.max_attempts = max_attempts
        self.budget = budget
        self.max_answer_bytes = max_answer_bytes
        self._auth = {"authorization": f"Bearer {upstream_api_key}"} if upstream_api_key else {}

    async def send(self, path: str, body: bytes, request_id: str, *, method: str = "POST",
                   spread: set[str] | None = None, tenant: str | None = None) -> UpstreamReply:
        """Send ``body`` (JSON) to ``path``; fail over on replica failure. Raises 503 when nothing answers.

        ``spread`` is shared by the parts of one split request: each part prefers a replica no sibling
        has taken yet, so N parts land on N replicas whenever N are available. ``tenant`` (the caller's key
        id) is sent as ``X-Rerankd-Tenant``, so a replica run with ``--api-key`` shares its batcher's turns
        per tenant; the headers are built here from nothing, so a client's own ``X-Rerankd-Tenant`` never
        reaches a replica.
        """
        self.budget.note_request()
        deadline = time.monotonic() + self.total_timeout
        tried: set[str] = set()
        last_problem = "no replica is available"
        busy_reply: UpstreamReply | None = None
        for attempt in range(1, self.max_attempts + 1):
            if attempt > 1 and not self.budget.try_spend():
                self.metrics.retry_budget_exhausted_total.inc()
                last_problem += "; retry budget exhausted"
                break
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                last_problem += "; total timeout reached"
                break
            upstream = self.pool.pick(exclude=tried | spread) if spread else None
            if upstream is None:
                upstream = self.pool.pick(exclude=tried)
            if upstream is None and tried:
                # Every replica was tried once: a second try on the least bad is better than giving up.
                upstream = self.pool.pick()
            if upstream is None:
                break
            tried.add(upstream.url)
            if spread is not None:
                spread.add(upstream.url)
            with tracing.span("gateway.attempt", kind=tracing.SpanKind.CLIENT) as current:
                if current is not None:  # attributes built only while tracing: off costs nothing
                    current.set_attributes({"rerankd.upstream": upstream.url, "url.full": upstream.url + path,
                                            "http.request.method": method, "rerankd.attempt": attempt})
                reply, problem, reason = await self._attempt(upstream, method, path, body, request_id, tenant,
                                                             min(self.attempt_timeout, remaining), attempt)
                note_attempt(current, reply, problem, reason)
            if reply is not None and reason is None:
                return reply
            if reply is not None:
                busy_reply = reply
            last_problem = f"{upstream.url}: {problem}"
            if attempt < self.max_attempts:
                self.metrics.retries_total.labels(reason=reason or "error").inc()
        if busy_reply is not None:
            return busy_reply  # every replica was busy: pass the last 503/429 (with its Retry-After) on
        self.metrics.no_upstream_total.inc()
        log.warning("no replica could answer", extra={"request_id": request_id, "problem": last_problem})
        raise UpstreamUnavailableError(f"no replica could answer the request ({last_problem}); retry later",
                                       retry_after=2)

    async def _attempt(self, upstream: Upstream, method: str, path: str, body: bytes, request_id: str,
                       tenant: str | None, timeout: float,
                       attempt: int) -> tuple[UpstreamReply | None, str, str | None]:
        """One try. Returns (reply, problem, retry reason): reason None means the reply is final."""
        headers = {"content-type": "application/json", "x-request-id": request_id, **self._auth}
        if tenant is not None:
            headers[TENANT_HEADER] = tenant
        tracing.inject(headers)  # this attempt's span: the replica's spans are its children
        started = time.perf_counter()
        async with self.pool.lease(upstream):  # in flight counts come from the leases at scrape time
            try:
                async with self.client.request(method, upstream.url + path, data=body or None, headers=headers,
                                               timeout=aiohttp.ClientTimeout(total=timeout)) as response:
                    content = await self._read_capped(response, upstream, started)
            except asyncio.TimeoutError:
                upstream.breaker.record_failure()
                self._observe(upstream, "timeout", started)
                return None, f"timed out after {timeout:.1f}s", "timeout"
            except aiohttp.ClientError as exc:
                # A lost half-open probe (client cancelled) is given up by the breaker after its probe timeout.
                outcome = "connect_error" if isinstance(exc, aiohttp.ClientConnectorError) else "error"
                upstream.breaker.record_failure()
                self._observe(upstream, outcome, started)
                return None, f"{type(exc).__name__}: {exc}", outcome
        status = response.status
        if status >= 300:
            content = safe_error_body(status, content, request_id=request_id, upstream=upstream.url)
        reply = UpstreamReply(
            status=status, body=content, upstream=upstream.url, attempts=attempt,
            headers={k.lower(): v for k, v in response.headers.items() if k.lower() in _FORWARDED_HEADERS},
        )
        if status in _BUSY:
            upstream.breaker.record_success()  # alive and answering; busy is not broken
            self._observe(upstream, "rejected", started)
            return reply, f"busy ({status})", "busy"
        if status >= 500:
            upstream.breaker.record_failure()
            self._observe(upstream, "error", started)
            return None, f"answered {status}", "server_error"
        upstream.breaker.record_success()
        self._observe(upstream, "success", started)
        return reply, "", None

    async def _read_capped(self, response: aiohttp.ClientResponse, upstream: Upstream, started: float) -> bytes:
        """The answer's bytes, read in chunks and abandoned past ``max_answer_bytes`` (a 502, see above)."""
        cap = self.max_answer_bytes
        declared = response.content_length
        if declared is None or declared <= cap:
            content = bytearray()
            async for chunk in response.content.iter_chunked(_CHUNK_BYTES):
                content += chunk
                if len(content) > cap:
                    break
            else:
                return bytes(content)
        response.close()  # drop the connection: the rest of the answer is never read
        upstream.breaker.record_success()  # alive and answering; the size is the request's doing
        self._observe(upstream, "too_large", started)
        size = f"{declared} bytes" if declared is not None and declared > cap else f"more than {cap} bytes"
        raise UpstreamMalformedError(
            f"the replica's answer is too large ({size}; the gateway reads at most {cap}, "
            "--max-upstream-answer-bytes): ask for fewer documents, a smaller top_n or return_documents=false")

    def _observe(self, upstream: Upstream, outcome: str, started: float) -> None:
        self.metrics.upstream_requests_total.labels(upstream=upstream.url, outcome=outcome).inc()
        self.metrics.upstream_duration_seconds.labels(upstream=upstream.url).observe(time.perf_counter() - started)


def note_attempt(current: tracing.Span | None, reply: UpstreamReply | None, problem: str, reason: str | None) -> None:
    """An attempt's span: the replica's status, and why it was not final (a retry follows, or the request
    fails)."""
    if current is None:
        return
    if reply is not None:
        current.set_attribute("http.response.status_code", reply.status)
    if reason is not None:
        current.set_attribute("rerankd.retry_reason", reason)
        tracing.set_error(current, problem)
