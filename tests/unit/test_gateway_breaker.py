"""The circuit breaker's state machine, driven by a fake clock."""

from __future__ import annotations

import pytest

from rerankd.gateway.breaker import BreakerState, CircuitBreaker


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def make(clock: FakeClock, **kwargs: object) -> tuple[CircuitBreaker, list[tuple[BreakerState, BreakerState]]]:
    seen: list[tuple[BreakerState, BreakerState]] = []
    breaker = CircuitBreaker(clock=clock, on_transition=lambda old, new: seen.append((old, new)), **kwargs)  # type: ignore[arg-type]
    return breaker, seen


def test_starts_closed_and_allows() -> None:
    breaker, seen = make(FakeClock())
    assert breaker.state is BreakerState.CLOSED
    assert breaker.allow_request() and breaker.can_attempt()
    assert seen == []


def test_consecutive_failures_open_it_and_a_success_resets_the_count() -> None:
    breaker, seen = make(FakeClock(), failure_threshold=3, min_requests=100)
    breaker.record_failure()
    breaker.record_failure()
    breaker.record_success()  # resets the streak
    breaker.record_failure()
    breaker.record_failure()
    assert breaker.state is BreakerState.CLOSED
    breaker.record_failure()
    assert breaker.state is BreakerState.OPEN
    assert seen == [(BreakerState.CLOSED, BreakerState.OPEN)]


def test_error_ratio_opens_it_only_once_min_requests_seen() -> None:
    breaker, _ = make(FakeClock(), failure_threshold=100, error_ratio=0.5, window=10, min_requests=6)
    for failed in (True, False, True, True, False):
        if failed:
            breaker.record_failure()
        else:
            breaker.record_success()
    assert breaker.state is BreakerState.CLOSED  # 3 of 5 failed, but fewer than min_requests seen
    breaker.record_failure()  # 4 of 6
    assert breaker.state is BreakerState.OPEN


def test_error_ratio_uses_a_sliding_window() -> None:
    breaker, _ = make(FakeClock(), failure_threshold=100, error_ratio=0.5, window=4, min_requests=4)
    for _ in range(10):
        breaker.record_success()
    breaker.record_failure()
    assert breaker.state is BreakerState.CLOSED  # 1 of last 4
    breaker.record_success()
    breaker.record_failure()  # last 4: S F S F = 2 of 4
    assert breaker.state is BreakerState.OPEN


def test_open_rejects_until_open_seconds_pass() -> None:
    clock = FakeClock()
    breaker, _ = make(clock, failure_threshold=1, open_seconds=5.0)
    breaker.record_failure()
    assert not breaker.allow_request() and not breaker.can_attempt()
    clock.advance(4.9)
    assert not breaker.allow_request()
    assert breaker.state is BreakerState.OPEN
    clock.advance(0.1)
    assert breaker.can_attempt()
    assert breaker.state is BreakerState.OPEN  # can_attempt claims nothing and changes nothing


def test_half_open_allows_exactly_one_probe() -> None:
    clock = FakeClock()
    breaker, seen = make(clock, failure_threshold=1, open_seconds=5.0)
    breaker.record_failure()
    clock.advance(5.0)
    assert breaker.allow_request()
    assert breaker.state is BreakerState.HALF_OPEN
    assert not breaker.allow_request()
    assert not breaker.can_attempt()
    assert seen == [(BreakerState.CLOSED, BreakerState.OPEN), (BreakerState.OPEN, BreakerState.HALF_OPEN)]


def test_probe_success_closes_and_resets_open_time() -> None:
    clock = FakeClock()
    breaker, seen = make(clock, failure_threshold=1, open_seconds=5.0)
    breaker.record_failure()
    clock.advance(5.0)
    assert breaker.allow_request()
    breaker.record_success()
    assert breaker.state is BreakerState.CLOSED
    assert breaker.allow_request() and breaker.allow_request()
    assert breaker.current_open_seconds == 5.0
    assert seen[-1] == (BreakerState.HALF_OPEN, BreakerState.CLOSED)


def test_probe_failure_reopens_with_doubled_time_up_to_the_cap() -> None:
    clock = FakeClock()
    breaker, seen = make(clock, failure_threshold=1, open_seconds=5.0, max_open_seconds=15.0)
    breaker.record_failure()
    for expected in (10.0, 15.0, 15.0):
        clock.advance(breaker.current_open_seconds)
        assert breaker.allow_request()
        breaker.record_failure()
        assert breaker.state is BreakerState.OPEN
        assert breaker.current_open_seconds == expected
        clock.advance(expected - 0.01)
        assert not breaker.allow_request()
        clock.advance(-(expected - 0.01))
    assert seen[-2:] == [(BreakerState.OPEN, BreakerState.HALF_OPEN), (BreakerState.HALF_OPEN, BreakerState.OPEN)]


def test_outcomes_while_open_are_ignored() -> None:
    clock = FakeClock()
    breaker, seen = make(clock, failure_threshold=1)
    breaker.record_failure()
    breaker.record_success()  # a late answer to a request sent before the trip
    breaker.record_failure()
    assert breaker.state is BreakerState.OPEN
    assert seen == [(BreakerState.CLOSED, BreakerState.OPEN)]


def test_a_lost_probe_is_given_up_after_probe_timeout() -> None:
    clock = FakeClock()
    breaker, _ = make(clock, failure_threshold=1, open_seconds=1.0, probe_timeout=10.0)
    breaker.record_failure()
    clock.advance(1.0)
    assert breaker.allow_request()
    clock.advance(9.9)
    assert not breaker.allow_request()
    clock.advance(0.1)
    assert breaker.allow_request()


def test_a_failing_callback_does_not_break_the_breaker() -> None:
    def boom(old: BreakerState, new: BreakerState) -> None:
        raise RuntimeError("metrics down")

    breaker = CircuitBreaker(failure_threshold=1, clock=FakeClock(), on_transition=boom)
    breaker.record_failure()
    assert breaker.state is BreakerState.OPEN


@pytest.mark.parametrize(
    "kwargs",
    [
        {"failure_threshold": 0},
        {"error_ratio": 0.0},
        {"open_seconds": 0.0},
        {"open_seconds": 10.0, "max_open_seconds": 5.0},
    ],
)
def test_rejects_bad_settings(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        CircuitBreaker(**kwargs)  # type: ignore[arg-type]
