"""Admission: which limiter decisions refuse a request, with which headers; then against a real limiter."""

from __future__ import annotations

import pytest

from rerankd.errors import PayloadTooLargeError, RateLimitedError
from rerankd.gateway.admit import (
    Admission,
    document_refusal,
    never_fits_refusal,
    request_refusal,
    token_headers,
    token_refusal,
)
from rerankd.gateway.authenticate import Identity
from rerankd.gateway.charge import UsageCharger
from rerankd.gateway.cost import estimate_prompt_tokens, scoring_tasks
from rerankd.gateway.db import create_engine_for
from rerankd.gateway.ledger import UsageLedger
from rerankd.gateway.ratelimit import Decision, RateLimiter, Reservation
from rerankd.observability.gateway_metrics import GatewayMetrics
from rerankd.protocol import RerankRequest


def decision(allowed: bool, limit: int | None = 10, remaining: int | None = 3, reset: float = 12.5,
             retry: int = 0) -> Decision:
    return Decision(allowed=allowed, limit=limit, remaining=remaining, reset_after=reset, retry_after=retry)


def test_an_allowed_request_is_not_refused() -> None:
    assert request_refusal(decision(True), rpm=10) is None


def test_a_spent_request_budget_is_a_429_naming_the_limit_with_retry_after() -> None:
    refusal = request_refusal(decision(False, remaining=0, retry=7), rpm=10)
    assert isinstance(refusal, RateLimitedError)
    assert "10 requests per minute" in refusal.message and "retry after 7 s" in refusal.message
    assert refusal.headers["Retry-After"] == "7" and refusal.headers["X-RateLimit-Remaining"] == "0"


def test_tokens_refused_when_the_estimate_does_not_fit_now() -> None:
    held = Reservation(decision=decision(True, limit=100, remaining=60), key_id="k", tpm=100, tokens=40,
                       entry_id="e")
    assert token_refusal(held, 100, 40, {}) is None
    denied = Reservation(decision=decision(False, limit=100, remaining=30, reset=3.2, retry=4), key_id="k",
                         tpm=100, tokens=0, entry_id="")
    refusal = token_refusal(denied, 100, 40, {"X-RateLimit-Limit": "10"})
    assert isinstance(refusal, RateLimitedError)
    assert "100 tokens per minute" in refusal.message and "up to 40" in refusal.message
    assert "30 are left" in refusal.message
    assert refusal.headers["X-RateLimit-Limit"] == "10" and refusal.headers["Retry-After"] == "4"
    assert refusal.headers["X-RateLimit-Remaining-Tokens"] == "30"


def test_a_request_over_the_whole_budget_never_fits() -> None:
    who = Identity(key_id="k", name="n", kind="key", is_admin=False, rpm=None, tpm=100)
    assert never_fits_refusal(who, 100) is None
    refusal = never_fits_refusal(who, 101)
    assert isinstance(refusal, PayloadTooLargeError) and "100 tokens per minute" in refusal.message
    assert never_fits_refusal(Identity(key_id="k", name="n", kind="key", is_admin=False, rpm=None, tpm=None),
                              10**9) is None


def test_token_headers() -> None:
    assert token_headers(decision(True, limit=100, remaining=40, reset=2.1)) == {
        "X-RateLimit-Limit-Tokens": "100", "X-RateLimit-Remaining-Tokens": "40", "X-RateLimit-Reset-Tokens": "3"}
    assert token_headers(decision(True, limit=100, remaining=None)) == {"X-RateLimit-Limit-Tokens": "100"}
    assert token_headers(decision(True, limit=None, remaining=None)) == {}


def test_document_count() -> None:
    assert document_refusal(1000, 1000) is None
    refusal = document_refusal(1001, 1000)
    assert isinstance(refusal, PayloadTooLargeError) and refusal.field == "documents"
    assert "1001 documents" in refusal.message and "--max-documents" in refusal.message


def body(documents: int, text: str = "d") -> RerankRequest:
    return RerankRequest(query="q", documents=[text] * documents)


def admission(limiter: RateLimiter, metrics: GatewayMetrics) -> Admission:
    return Admission(limiter, metrics, max_documents=10, upstream_max_model_len=32768)


async def test_admission_against_the_real_in_process_limiter() -> None:
    limiter, metrics = RateLimiter(), GatewayMetrics()
    key = Identity(key_id="k1", name="team-a", kind="key", is_admin=False, rpm=2, tpm=5000)
    gate = admission(limiter, metrics)
    headers, held = await gate.admit(key, 3, body(3))
    estimate = estimate_prompt_tokens(scoring_tasks(body(3)), 32768)
    assert headers["X-RateLimit-Limit"] == "2" and headers["X-RateLimit-Remaining"] == "1"
    assert headers["X-RateLimit-Limit-Tokens"] == "5000"
    assert headers["X-RateLimit-Remaining-Tokens"] == str(5000 - estimate) and held.tokens == estimate
    with pytest.raises(PayloadTooLargeError):
        await gate.admit(key, 11, body(11))  # the second request of the minute, refused for its size: still spent
    with pytest.raises(RateLimitedError, match="2 requests per minute"):
        await gate.admit(key, 1, body(1))
    assert metrics.registry.get_sample_value("rerankd_gateway_rate_limited_total", {"limit": "requests"}) == 1
    await limiter.close()


async def test_settling_refunds_the_estimate_down_to_the_real_count() -> None:
    limiter, metrics = RateLimiter(), GatewayMetrics()
    who = Identity(key_id="k2", name="team-b", kind="key", is_admin=False, rpm=None, tpm=400)
    gate = admission(limiter, metrics)
    charger = UsageCharger(limiter, UsageLedger(create_engine_for("sqlite://")), metrics)
    estimate = estimate_prompt_tokens(scoring_tasks(body(1)), 32768)
    _, held = await gate.admit(who, 1, body(1))
    assert (await charger.settle(held, 30))["X-RateLimit-Remaining-Tokens"] == "370"  # only the real 30 stay spent
    holds = []
    for _ in range(370 // estimate):
        holds.append((await gate.admit(who, 1, body(1)))[1])
    with pytest.raises(RateLimitedError, match="400 tokens per minute") as caught:
        await gate.admit(who, 1, body(1))  # the estimates in flight fill what is left
    assert int(caught.value.headers["X-RateLimit-Remaining-Tokens"]) < estimate
    assert metrics.registry.get_sample_value("rerankd_gateway_rate_limited_total", {"limit": "tokens"}) == 1
    for hold in holds:
        await charger.settle(hold, 0)  # failed requests: full refunds
    _, again = await gate.admit(who, 1, body(1))
    assert again.allowed
    await limiter.close()
