"""The tokens-per-minute step of admission, as the gateway's routes call it: reserve, then settle.

Why its own module: the limiter (:mod:`rerankd.gateway.ratelimit`) answers in budgets and seconds; this
turns its answers into what a client sees (413 or 429 with a message naming the limit, and the
``X-RateLimit-*-Tokens`` headers), so every route that admits requests says the same thing.

A request whose upper-bound estimate exceeds the key's whole tokens-per-minute budget is a 413, not a
429: waiting can never make it fit, and a 429 with ``Retry-After`` would have a well-behaved client
retry it forever. The client can always make it fit by sending fewer or shorter documents, or by
capping each one (``max_tokens_per_doc``; ``truncate_prompt_tokens`` on ``/v1/score``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from rerankd.errors import PayloadTooLargeError, RateLimitedError
from rerankd.gateway.auth import Identity
from rerankd.gateway.ratelimit import Decision, RateLimiter, Reservation
from rerankd.observability.gateway_metrics import GatewayMetrics

__all__ = ["admit_tokens", "reject_if_never_fits", "settle_tokens", "token_headers"]


def reject_if_never_fits(identity: Identity, estimate: int) -> None:
    """413 when the request could never be admitted under the key's tokens-per-minute limit.

    Needs no storage, so callers run it before spending anything else (a request of the key's rpm).
    """
    if identity.tpm is not None and estimate > identity.tpm:
        raise PayloadTooLargeError(
            f"this request may use up to {estimate} tokens (estimated before forwarding: the UTF-8 bytes of "
            f"its text plus the prompt template, for each document), more than this key's limit of "
            f"{identity.tpm} tokens per minute; send fewer or shorter documents, or cap each one with "
            "max_tokens_per_doc (truncate_prompt_tokens on /v1/score)", field="documents")


async def admit_tokens(limiter: RateLimiter, identity: Identity, estimate: int, metrics: GatewayMetrics,
                       headers: Mapping[str, str] | None = None) -> tuple[Reservation, dict[str, str]]:
    """Reserve ``estimate`` tokens of the key's budget, or raise 413 (never fits) / 429 (not now).

    Returns the reservation, to settle once the request is over, and the token headers (budget left
    after this reservation). ``headers`` (the request-limit ones) are added to a 429's headers.
    """
    reject_if_never_fits(identity, estimate)
    reservation = await limiter.reserve_tokens(identity.key_id, identity.tpm, estimate)
    out = token_headers(reservation.decision)
    if not reservation.allowed:
        metrics.rate_limited_total.labels(limit="tokens").inc()
        decision = reservation.decision
        left = "" if decision.remaining is None else f" and {decision.remaining} are left"
        raise RateLimitedError(
            f"token limit of {identity.tpm} tokens per minute reached for this key: this request may use up to "
            f"{estimate}{left}; retry after {decision.retry_after} s",
            headers={**(headers or {}), **out, "Retry-After": str(max(1, decision.retry_after))})
    return reservation, out


async def settle_tokens(limiter: RateLimiter, reservation: Reservation, actual: int) -> dict[str, str]:
    """Replace the reservation with the request's real token count (0 for a failed request: a refund).

    Returns the token headers with the budget left after settlement. Never raises for storage errors.
    """
    return token_headers(await limiter.settle(reservation, actual))


def token_headers(decision: Decision) -> dict[str, str]:
    """OpenAI-style token budget headers beside the request ones (none for an unlimited key)."""
    if decision.limit is None:
        return {}
    out = {"X-RateLimit-Limit-Tokens": str(decision.limit)}
    if decision.remaining is not None:
        out["X-RateLimit-Remaining-Tokens"] = str(decision.remaining)
        out["X-RateLimit-Reset-Tokens"] = str(math.ceil(decision.reset_after))
    return out
