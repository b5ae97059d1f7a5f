"""Step 4 of a scoring request, charge and record: settle the tokens, write one usage row, count.

Why after the fact: only the replica knows a request's token count, so admission reserved an upper bound
of it from the key's tokens/min and :meth:`UsageCharger.settle` replaces that with what was actually used
(refunding the rest; a request that failed refunds all). Why exactly one row
per request, whatever happened (success, 4xx, 429, 502, the client hanging up): billing and the
``/v1/usage`` report count requests from the ledger, and a request that did reach the gateway must
appear there once.

Why :class:`KeyLabels`: the per-key metrics are labelled by the key's name, a value the operator chose and
the key table bounds. A JWT's subject is neither (anyone the issuer signs for, and a person's identity),
so every JWT caller is counted under one label, ``jwt:*``; per-subject usage is in the ledger. Past
:data:`MAX_KEY_LABELS` distinct names, further keys share ``other`` so no table can grow the series
without bound.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from rerankd.gateway.admit import token_headers
from rerankd.gateway.authenticate import Identity
from rerankd.gateway.ledger import UsageEntry, UsageLedger
from rerankd.gateway.ratelimit import RateLimiter, Reservation
from rerankd.observability.gateway_metrics import GatewayMetrics
from rerankd.observability.tasks import task_of_route

__all__ = ["JWT_LABEL", "MAX_KEY_LABELS", "KeyLabels", "Outcome", "UsageCharger", "usage_row_id"]

_MAX_UPSTREAM_CHARS = 512  # the ledger's upstream column; a split over many replicas joins their URLs
JWT_LABEL = "jwt:*"  # the ledger's key_id of a JWT caller is ``jwt:<subject>``; the metrics keep only the kind
OTHER_LABEL = "other"
MAX_KEY_LABELS = 1000


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


class KeyLabels:
    """The ``key`` label of an identity's per-key series: its key name, bounded (see the module's doc)."""

    def __init__(self, limit: int = MAX_KEY_LABELS) -> None:
        self._limit = limit
        self._seen: set[str] = set()

    def of(self, identity: Identity) -> str:
        if identity.kind == "jwt":
            return JWT_LABEL
        name = identity.name
        if name not in self._seen:
            if len(self._seen) >= self._limit:
                return OTHER_LABEL
            self._seen.add(name)
        return name


class UsageCharger:
    """Spends tokens from the key's tokens/min and records each request in the ledger and the metrics."""

    def __init__(self, limiter: RateLimiter, ledger: UsageLedger, metrics: GatewayMetrics) -> None:
        self._limiter = limiter
        self._ledger = ledger
        self._metrics = metrics
        self._labels = KeyLabels()

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
        key = self._labels.of(who)
        task = task_of_route(outcome.route)
        self._metrics.key_requests_total.labels(key=key, status=str(outcome.status), task=task).inc()
        if outcome.status == 200:
            self._metrics.key_tokens_total.labels(key=key, task=task).inc(outcome.tokens)
            self._metrics.key_documents_total.labels(key=key, task=task).inc(outcome.documents)
