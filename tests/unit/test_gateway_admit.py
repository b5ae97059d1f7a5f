"""Admission: which limiter decisions refuse a request, with which headers; then against a real limiter."""

from __future__ import annotations

import pytest

from rerankd.errors import PayloadTooLargeError, RateLimitedError
from rerankd.gateway.admit import Admission, document_refusal, request_refusal, token_headers, token_refusal
from rerankd.gateway.authenticate import Identity
from rerankd.gateway.charge import UsageCharger
from rerankd.gateway.db import create_engine_for
from rerankd.gateway.ledger import UsageLedger
from rerankd.gateway.ratelimit import Decision, RateLimiter
from rerankd.observability.gateway_metrics import GatewayMetrics


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


@pytest.mark.parametrize(("remaining", "refused"), [(5, False), (1, False), (0, True), (None, False)])
def test_tokens_refuse_only_when_none_is_left(remaining: int | None, refused: bool) -> None:
    # None: the storage could not be asked, which is not "nothing left" (fail-open decides elsewhere).
    tokens = decision(True, limit=100, remaining=remaining, reset=3.2)
    refusal = token_refusal(tokens, 100, {"X-RateLimit-Limit": "10"})
    assert (refusal is not None) is refused
    if refusal is not None:
        assert "100 tokens per minute" in refusal.message
        assert refusal.headers == {"X-RateLimit-Limit": "10", "Retry-After": "4"}  # reset rounded up


def test_token_headers() -> None:
    assert token_headers(decision(True, limit=100, remaining=40)) == {
        "X-RateLimit-Limit-Tokens": "100", "X-RateLimit-Remaining-Tokens": "40"}
    assert token_headers(decision(True, limit=100, remaining=None)) == {"X-RateLimit-Limit-Tokens": "100"}


def test_document_count() -> None:
    assert document_refusal(1000, 1000) is None
    refusal = document_refusal(1001, 1000)
    assert isinstance(refusal, PayloadTooLargeError) and refusal.field == "documents"
    assert "1001 documents" in refusal.message and "--max-documents" in refusal.message


KEY = Identity(key_id="k1", name="team-a", kind="key", is_admin=False, rpm=2, tpm=50)


async def test_admission_against_the_real_in_process_limiter() -> None:
    limiter, metrics = RateLimiter(), GatewayMetrics()
    admission = Admission(limiter, metrics, max_documents=10)
    headers = await admission.admit(KEY, 3)
    assert headers["X-RateLimit-Limit"] == "2" and headers["X-RateLimit-Remaining"] == "1"
    assert headers["X-RateLimit-Limit-Tokens"] == "50" and headers["X-RateLimit-Remaining-Tokens"] == "50"
    with pytest.raises(PayloadTooLargeError):
        await admission.admit(KEY, 11)  # the second request of the minute, refused for its size
    with pytest.raises(RateLimitedError, match="2 requests per minute"):
        await admission.admit(KEY, 1)
    assert metrics.registry.get_sample_value("rerankd_gateway_rate_limited_total", {"limit": "requests"}) == 1
    await limiter.close()


async def test_charged_tokens_empty_the_budget_and_admission_then_refuses() -> None:
    limiter, metrics = RateLimiter(), GatewayMetrics()
    who = Identity(key_id="k2", name="team-b", kind="key", is_admin=False, rpm=None, tpm=50)
    admission = Admission(limiter, metrics, max_documents=10)
    charger = UsageCharger(limiter, UsageLedger(create_engine_for("sqlite://")), metrics)
    await admission.admit(who, 1)
    await charger.charge_tokens(who, 30)
    assert (await admission.admit(who, 1))["X-RateLimit-Remaining-Tokens"] == "20"
    await charger.charge_tokens(who, 500)  # more than is left: the budget is emptied, not refused after the fact
    with pytest.raises(RateLimitedError, match="50 tokens per minute") as caught:
        await admission.admit(who, 1)
    assert caught.value.headers["X-RateLimit-Remaining-Tokens"] == "0"
    assert metrics.registry.get_sample_value("rerankd_gateway_rate_limited_total", {"limit": "tokens"}) == 1
    await limiter.close()
