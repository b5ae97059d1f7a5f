"""A per-replica circuit breaker: passive outlier detection for the gateway's upstream pool.

Why: active health checks run every few seconds and only see ``/ready``; a replica that answers
``/ready`` but fails real requests (out of memory, a wedged GPU) must stop receiving traffic at once.
The breaker watches the outcome of every proxied request and ejects the replica for a while when it
fails too often, then lets exactly one probe request through to learn whether it recovered.

States::

    CLOSED    --(N consecutive failures, or error ratio over the window)-->  OPEN
    OPEN      --(open time elapsed, on the next allow_request)----------->  HALF_OPEN
    HALF_OPEN --(probe succeeds)----------------------------------------->  CLOSED
    HALF_OPEN --(probe fails; open time doubles up to a cap)------------->  OPEN

The breaker does no I/O and reads time only through the injected ``clock``, so tests drive it with a
fake clock and it is safe to share within one event loop (it is not thread-safe).
"""

from __future__ import annotations

import enum
import logging
import time
from collections import deque
from collections.abc import Callable

__all__ = ["BreakerState", "CircuitBreaker", "TransitionCallback"]

log = logging.getLogger(__name__)


class BreakerState(str, enum.Enum):
    """Where a breaker stands; the value is what ``/admin`` and metrics show."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


TransitionCallback = Callable[[BreakerState, BreakerState], None]


class CircuitBreaker:
    """Decides whether a request may go to one upstream, from the outcomes of earlier requests.

    Use: call :meth:`allow_request` right before sending (it may claim the single half-open probe
    slot), then exactly one of :meth:`record_success` / :meth:`record_failure` with the outcome.
    :meth:`can_attempt` answers the same question without claiming anything, for a balancer that
    looks at several candidates before choosing one.
    """

    def __init__(
        self,
        failure_threshold: int = 5,
        error_ratio: float = 0.5,
        window: int = 20,
        min_requests: int = 10,
        open_seconds: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
        *,
        max_open_seconds: float = 60.0,
        probe_timeout: float = 30.0,
        on_transition: TransitionCallback | None = None,
    ) -> None:
        """Configure the trip rules.

        ``failure_threshold`` consecutive failures open the breaker; so does an error ratio of at least
        ``error_ratio`` over the last ``window`` outcomes, once ``min_requests`` outcomes are in the
        window (so two early failures out of three cannot eject a replica). ``open_seconds`` is the first
        ejection; each failed probe doubles it up to ``max_open_seconds``. A probe whose outcome is never
        recorded (its caller was cancelled) is given up after ``probe_timeout`` seconds so the breaker
        cannot stay half-open forever.
        """
        if failure_threshold < 1 or window < 1 or min_requests < 1:
            raise ValueError("failure_threshold, window and min_requests must be at least 1")
        if not 0.0 < error_ratio <= 1.0:
            raise ValueError("error_ratio must be in (0, 1]")
        if open_seconds <= 0 or max_open_seconds < open_seconds:
            raise ValueError("need 0 < open_seconds <= max_open_seconds")
        self.failure_threshold = failure_threshold
        self.error_ratio = error_ratio
        self.min_requests = min_requests
        self.open_seconds = open_seconds
        self.max_open_seconds = max_open_seconds
        self.probe_timeout = probe_timeout
        self.on_transition = on_transition
        self._clock = clock
        self._state = BreakerState.CLOSED
        self._outcomes: deque[bool] = deque(maxlen=window)  # True = failure
        self._consecutive_failures = 0
        self._current_open_seconds = open_seconds
        self._opened_at = 0.0
        self._probe_started_at: float | None = None

    # -- queries -------------------------------------------------------------------------------

    @property
    def state(self) -> BreakerState:
        """The current state (an OPEN breaker whose time is up stays OPEN until it is asked)."""
        return self._state

    @property
    def current_open_seconds(self) -> float:
        """How long the next (or current) ejection lasts; grows on failed probes."""
        return self._current_open_seconds

    def can_attempt(self) -> bool:
        """Whether :meth:`allow_request` would say yes now, without claiming the probe slot."""
        now = self._clock()
        if self._state is BreakerState.CLOSED:
            return True
        if self._state is BreakerState.OPEN:
            return now - self._opened_at >= self._current_open_seconds
        return self._probe_started_at is None or now - self._probe_started_at >= self.probe_timeout

    def allow_request(self) -> bool:
        """Whether a request may be sent now; in HALF_OPEN a yes claims the one probe slot."""
        now = self._clock()
        if self._state is BreakerState.CLOSED:
            return True
        if self._state is BreakerState.OPEN:
            if now - self._opened_at < self._current_open_seconds:
                return False
            self._transition(BreakerState.HALF_OPEN)
        # HALF_OPEN: one probe at a time; a probe lost without an outcome is given up after a while.
        if self._probe_started_at is not None and now - self._probe_started_at < self.probe_timeout:
            return False
        self._probe_started_at = now
        return True

    # -- outcomes ------------------------------------------------------------------------------

    def record_success(self) -> None:
        """Note a successful request; a successful probe closes the breaker."""
        if self._state is BreakerState.HALF_OPEN:
            self._close()
        elif self._state is BreakerState.CLOSED:
            self._consecutive_failures = 0
            self._outcomes.append(False)
        # OPEN: a late answer to a request sent before the trip says nothing about recovery.

    def record_failure(self) -> None:
        """Note a failed request; may open the breaker, and a failed probe reopens it for longer."""
        if self._state is BreakerState.HALF_OPEN:
            self._current_open_seconds = min(self._current_open_seconds * 2, self.max_open_seconds)
            self._open()
        elif self._state is BreakerState.CLOSED:
            self._consecutive_failures += 1
            self._outcomes.append(True)
            if self._consecutive_failures >= self.failure_threshold or self._ratio_tripped():
                self._open()

    # -- internals -----------------------------------------------------------------------------

    def _ratio_tripped(self) -> bool:
        seen = len(self._outcomes)
        return seen >= self.min_requests and sum(self._outcomes) / seen >= self.error_ratio

    def _open(self) -> None:
        self._opened_at = self._clock()
        self._probe_started_at = None
        self._transition(BreakerState.OPEN)

    def _close(self) -> None:
        self._current_open_seconds = self.open_seconds
        self._consecutive_failures = 0
        self._outcomes.clear()  # a recovered replica starts with a clean record
        self._probe_started_at = None
        self._transition(BreakerState.CLOSED)

    def _transition(self, new: BreakerState) -> None:
        old, self._state = self._state, new
        if old is new or self.on_transition is None:
            return
        try:
            self.on_transition(old, new)
        except Exception:  # a broken metrics/log hook must not break the request path
            log.exception("circuit breaker on_transition callback failed")
