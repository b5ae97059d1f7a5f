"""Step 4 of a scoring request, charge and record: settle the tokens, write one usage row, count.

Why after the fact: only the replica knows a request's token count, so admission reserved an upper bound
of it from the key's tokens/min and :meth:`UsageCharger.settle` replaces that with what was actually used
(refunding the rest; a request that failed refunds all). Why exactly one row
per request, whatever happened (success, 4xx, 429, 502, the client hanging up): billing and the
``/v1/usage`` report count requests from the ledger, and a request that did reach the gateway must
appear there once.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from rerankd.gateway.admit import token_headers
from rerankd.gateway.authenticate import Identity
from rerankd.gateway.ledger import UsageEntry, UsageLedger
from rerankd.gateway.ratelimit import RateLimiter, Reservation
from rerankd.observability.gateway_metrics import GatewayMetrics

__all__ = ["Outcome", "UsageCharger", "usage_row_id"]

_MAX_UPSTREAM_CHARS = 512  # the ledger's upstream column; a split over many replicas joins their URLs


@dataclass(frozen=True)
class Outcome:
    """How one scoring request ended, as the ledger and the per-key metrics record it."""

    identity: Identity
    route: str
    model: str
    documents: int
    status: int
    tokens: int
    latency_ms: float
    request_id: str
    request_id_given: bool
    upstream: str | None = None


def usage_row_id(request_id: str, given_by_client: bool) -> str:
    """The ledger row's id: the request id, made unique when the client chose it (clients reuse theirs)."""
    return f"{request_id}~{uuid.uuid4().hex[:8]}" if given_by_client else request_id


class UsageCharger:
    """Spends tokens from the key's tokens/min and records each request in the ledger and the metrics."""

    def __init__(self, limiter: RateLimiter, ledger: UsageLedger, metrics: GatewayMetrics) -> None:
        self._limiter = limiter
        self._ledger = ledger
        self._metrics = metrics

    async def settle(self, reservation: Reservation, tokens: int) -> dict[str, str]:
        """Replace the request's token reservation with its real count (0 for a request that failed: a full
        refund); the token headers with the budget left after it. Never raises for storage errors."""
        return token_headers(await self._limiter.settle(reservation, tokens))

    def record(self, outcome: Outcome) -> None:
        """One usage row (buffered, never blocks) and the per-key counters; tokens and documents on 200 only."""
        who = outcome.identity
        self._ledger.record(UsageEntry(
            request_id=usage_row_id(outcome.request_id, outcome.request_id_given), key_id=who.key_id,
            model=outcome.model, documents=outcome.documents, tokens=outcome.tokens,
            latency_ms=outcome.latency_ms, status=outcome.status, route=outcome.route,
            upstream=outcome.upstream[:_MAX_UPSTREAM_CHARS] if outcome.upstream else None))
        self._metrics.key_requests_total.labels(key=who.name, status=str(outcome.status)).inc()
        if outcome.status == 200:
            self._metrics.key_tokens_total.labels(key=who.name).inc(outcome.tokens)
            self._metrics.key_documents_total.labels(key=who.name).inc(outcome.documents)
