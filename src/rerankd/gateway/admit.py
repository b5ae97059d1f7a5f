"""Step 2 of a scoring request, admit: spend one of the key's requests/min, check its tokens/min, size.

Why tokens are checked and not spent here: a request's token count is known only once a replica has
tokenized it, so admission refuses a key whose tokens/min are already spent and the charge step
(:mod:`rerankd.gateway.charge`) spends the real count afterwards. The refusals are pure functions of
the limiter's decisions (tested without a limiter); :class:`Admission` asks the limiter and counts.
"""

from __future__ import annotations

import math

from rerankd.errors import PayloadTooLargeError, RateLimitedError
from rerankd.gateway.authenticate import Identity
from rerankd.gateway.ratelimit import Decision, RateLimiter
from rerankd.observability.gateway_metrics import GatewayMetrics

__all__ = ["Admission", "document_refusal", "request_refusal", "token_headers", "token_refusal"]


def request_refusal(decision: Decision, rpm: int | None) -> RateLimitedError | None:
    """The 429 for a spent requests/min budget (with ``X-RateLimit-*`` and ``Retry-After``), else None."""
    if decision.allowed:
        return None
    return RateLimitedError(
        f"rate limit of {rpm} requests per minute reached for this key; retry after {decision.retry_after} s",
        headers=decision.headers())


def token_headers(decision: Decision) -> dict[str, str]:
    """OpenAI-style token budget headers beside the request ones."""
    out = {"X-RateLimit-Limit-Tokens": str(decision.limit)}
    if decision.remaining is not None:
        out["X-RateLimit-Remaining-Tokens"] = str(decision.remaining)
    return out


def token_refusal(decision: Decision, tpm: int, headers: dict[str, str]) -> RateLimitedError | None:
    """The 429 when no token of the key's tokens/min is left (``headers`` go with it), else None.

    ``remaining`` is None when the storage could not be asked: that is not "nothing left", and the
    limiter's ``--ratelimit-fail-open`` already decided the request check.
    """
    if decision.remaining != 0:
        return None
    retry = max(1, math.ceil(decision.reset_after))
    return RateLimitedError(
        f"token limit of {tpm} tokens per minute reached for this key; retry after {retry} s",
        headers={**headers, "Retry-After": str(retry)})


def document_refusal(documents: int, max_documents: int) -> PayloadTooLargeError | None:
    """The 413 for more documents than the gateway takes in one request, else None."""
    if documents <= max_documents:
        return None
    return PayloadTooLargeError(
        f"{documents} documents is more than the gateway's limit of {max_documents} (--max-documents); "
        "split the request", field="documents")


class Admission:
    """Lets a scoring request through or raises its 429/413; returns the rate-limit headers to send."""

    def __init__(self, limiter: RateLimiter, metrics: GatewayMetrics, *, max_documents: int) -> None:
        self._limiter = limiter
        self._metrics = metrics
        self._max_documents = max_documents

    async def admit(self, identity: Identity, documents: int) -> dict[str, str]:
        """Spend one request of the key's requests/min; refuse when its tokens/min are spent or it is too big."""
        decision = await self._limiter.check_request(identity.key_id, identity.rpm)
        refusal = request_refusal(decision, identity.rpm)
        if refusal is not None:
            self._metrics.rate_limited_total.labels(limit="requests").inc()
            raise refusal
        headers = decision.headers()
        if identity.tpm is not None:
            tokens = await self._limiter.check_tokens(identity.key_id, identity.tpm, 0)
            headers.update(token_headers(tokens))
            refusal = token_refusal(tokens, identity.tpm, headers)
            if refusal is not None:
                self._metrics.rate_limited_total.labels(limit="tokens").inc()
                raise refusal
        too_large = document_refusal(documents, self._max_documents)
        if too_large is not None:
            raise too_large
        return headers
