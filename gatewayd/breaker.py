"""A circuit breaker shared by upstreams and remote guardrail services.

closed --(failure_threshold consecutive failures)--> open
open   --(open_for elapsed)--> half-open: at most half_open_max probes at once
half-open --(a probe succeeds)--> closed ; --(a probe fails)--> open again

The clock is injectable so tests step time instead of sleeping.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable

from gatewayd.config.schema import BreakerConfig


class BreakerState(enum.Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitBreaker:
    """Counts consecutive failures and refuses calls while open."""

    __slots__ = ("_clock", "_config", "_failures", "_on_change", "_opened_at", "_probes", "_state")

    def __init__(
        self,
        config: BreakerConfig,
        *,
        clock: Callable[[], float] = time.monotonic,
        on_change: Callable[[BreakerState], None] | None = None,
    ) -> None:
        self._config = config
        self._clock = clock
        self._on_change = on_change
        self._state = BreakerState.CLOSED
        self._failures = 0
        self._opened_at = 0.0
        self._probes = 0

    @property
    def state(self) -> BreakerState:
        if (
            self._state is BreakerState.OPEN
            and self._clock() - self._opened_at >= self._config.open_for
        ):
            self._set(BreakerState.HALF_OPEN)
            self._probes = 0
        return self._state

    @property
    def failures(self) -> int:
        """Consecutive failures so far: 0 after a success; once it reaches
        failure_threshold the breaker is open."""
        return self._failures

    def allow(self) -> bool:
        """May a call go out now? In half-open, each True is a probe slot
        that must be answered with record_success or record_failure."""
        state = self.state
        if state is BreakerState.CLOSED:
            return True
        if state is BreakerState.HALF_OPEN and self._probes < self._config.half_open_max:
            self._probes += 1
            return True
        return False

    def retry_after(self) -> float:
        """Seconds until the breaker will let a probe through (0 when closed)."""
        if self.state is not BreakerState.OPEN:
            return 0.0
        return max(0.0, self._config.open_for - (self._clock() - self._opened_at))

    def record_success(self) -> None:
        self._failures = 0
        if self._state is not BreakerState.CLOSED:
            self._probes = 0
            self._set(BreakerState.CLOSED)

    def record_failure(self) -> None:
        self._failures += 1
        if self._state is BreakerState.HALF_OPEN or (
            self._state is BreakerState.CLOSED and self._failures >= self._config.failure_threshold
        ):
            self._opened_at = self._clock()
            self._probes = 0
            self._set(BreakerState.OPEN)

    def _set(self, state: BreakerState) -> None:
        if state is not self._state:
            self._state = state
            if self._on_change is not None:
                self._on_change(state)
