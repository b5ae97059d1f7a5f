"""Step 2 of a scoring request, admit: spend one of the key's requests/min, check the request's size, and
reserve an upper bound of its tokens from the key's tokens/min.

Why tokens are reserved here and settled later: a request's real token count is known only once a replica
has tokenized it. Checking "is any budget left?" and charging afterwards let one request overshoot a budget
without bound (tpm=2000 admitted 78,272 tokens). So admission reserves an upper bound computed from the body
(:mod:`rerankd.gateway.cost`), and the charge step (:mod:`rerankd.gateway.charge`) settles the reservation
to the real count, refunding the rest. A request that could never fit the key's whole budget is a 413, not a
429: waiting can never make it fit, and ``Retry-After`` would have a client retry it forever.

Why the requests/min budget is spent first: every request the gateway looks at costs it work, so a request
refused for its size or cost still counts against the key's requests/min (an attacker cannot send oversized
requests for free). The refusals are pure functions of the limiter's decisions (tested without a limiter);
:class:`Admission` asks the limiter and counts.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from rerankd.errors import PayloadTooLargeError, RateLimitedError
from rerankd.gateway.authenticate import Identity
from rerankd.gateway.cost import (
    EmbeddingBody,
    ScoringBody,
    estimate_embed_tokens,
    estimate_prompt_tokens,
    scoring_tasks,
)
from rerankd.gateway.ratelimit import Decision, RateLimiter, Reservation
from rerankd.observability.gateway_metrics import GatewayMetrics
from rerankd.protocol import RerankRequest, ScoreRequest, TEIRerankRequest

__all__ = ["Admission", "document_refusal", "never_fits_refusal", "request_refusal", "token_headers",
           "token_refusal"]


def request_refusal(decision: Decision, rpm: int | None) -> RateLimitedError | None:
    """The 429 for a spent requests/min budget (with ``X-RateLimit-*`` and ``Retry-After``), else None."""
    if decision.allowed:
        return None
    return RateLimitedError(
        f"rate limit of {rpm} requests per minute reached for this key; retry after {decision.retry_after} s",
        headers=decision.headers())


def document_refusal(documents: int, max_documents: int) -> PayloadTooLargeError | None:
    """The 413 for more documents than the gateway takes in one request, else None."""
    if documents <= max_documents:
        return None
    return PayloadTooLargeError(
        f"{documents} documents is more than the gateway's limit of {max_documents} (--max-documents); "
        "split the request", field="documents")


def never_fits_refusal(identity: Identity, estimate: int) -> PayloadTooLargeError | None:
    """The 413 for a request whose token estimate exceeds the key's whole tokens/min budget, else None."""
    if identity.tpm is None or estimate <= identity.tpm:
        return None
    return PayloadTooLargeError(
        f"this request may use up to {estimate} tokens (estimated before forwarding: the UTF-8 bytes of "
        f"its text plus the prompt template, for each document), more than this key's limit of "
        f"{identity.tpm} tokens per minute; send fewer or shorter documents, or cap each one with "
        "max_tokens_per_doc (truncate_prompt_tokens on /v1/score)", field="documents")


def token_headers(decision: Decision) -> dict[str, str]:
    """OpenAI-style token budget headers beside the request ones (none for an unlimited key)."""
    if decision.limit is None:
        return {}
    out = {"X-RateLimit-Limit-Tokens": str(decision.limit)}
    if decision.remaining is not None:
        out["X-RateLimit-Remaining-Tokens"] = str(decision.remaining)
        out["X-RateLimit-Reset-Tokens"] = str(math.ceil(decision.reset_after))
    return out


def token_refusal(reservation: Reservation, tpm: int | None, estimate: int,
                  headers: Mapping[str, str]) -> RateLimitedError | None:
    """The 429 when the estimate does not fit what is left of the key's tokens/min now, else None."""
    if reservation.allowed:
        return None
    decision = reservation.decision
    left = "" if decision.remaining is None else f" and {decision.remaining} are left"
    return RateLimitedError(
        f"token limit of {tpm} tokens per minute reached for this key: this request may use up to "
        f"{estimate}{left}; retry after {decision.retry_after} s",
        headers={**headers, **token_headers(decision), "Retry-After": str(max(1, decision.retry_after))})


class Admission:
    """Lets a scoring request through or raises its 429/413; returns the rate-limit headers and the token
    reservation, which the caller must settle (:meth:`rerankd.gateway.charge.UsageCharger.settle`)."""

    def __init__(self, limiter: RateLimiter, metrics: GatewayMetrics, *, max_documents: int,
                 upstream_max_model_len: int) -> None:
        self._limiter = limiter
        self._metrics = metrics
        self._max_documents = max_documents
        self._max_model_len = upstream_max_model_len

    async def admit(self, identity: Identity, documents: int,
                    body: ScoringBody | EmbeddingBody) -> tuple[dict[str, str], Reservation]:
        """Spend one request of the key's requests/min, refuse a request too big, reserve its tokens."""
        headers = await self.spend_request(identity)
        too_large = document_refusal(documents, self._max_documents)
        if too_large is not None:
            raise too_large
        estimate = 0
        if identity.tpm is not None:
            if isinstance(body, RerankRequest | TEIRerankRequest | ScoreRequest):
                estimate = estimate_prompt_tokens(scoring_tasks(body), self._max_model_len)
            else:
                estimate = estimate_embed_tokens(body, self._max_model_len)
            never = never_fits_refusal(identity, estimate)
            if never is not None:
                raise never
        reservation = await self._limiter.reserve_tokens(identity.key_id, identity.tpm, estimate)
        refused = token_refusal(reservation, identity.tpm, estimate, headers)
        if refused is not None:
            self._metrics.rate_limited_total.labels(limit="tokens").inc()
            raise refused
        return {**headers, **token_headers(reservation.decision)}, reservation

    async def spend_request(self, identity: Identity) -> dict[str, str]:
        """Spend one request of the key's requests/min (429 when it is spent); its ``X-RateLimit-*`` headers."""
        decision = await self._limiter.check_request(identity.key_id, identity.rpm)
        refusal = request_refusal(decision, identity.rpm)
        if refusal is not None:
            self._metrics.rate_limited_total.labels(limit="requests").inc()
            raise refusal
        return decision.headers()
