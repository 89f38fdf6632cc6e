"""The circuit breaker's state machine, on a stepped clock."""

from __future__ import annotations

from gatewayd.breaker import BreakerState, CircuitBreaker
from gatewayd.config.schema import BreakerConfig


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _breaker(**kw: float) -> tuple[CircuitBreaker, Clock, list[BreakerState]]:
    clock = Clock()
    changes: list[BreakerState] = []
    config = BreakerConfig(**{"failure_threshold": 3, "open_for": 10.0, "half_open_max": 1, **kw})  # type: ignore[arg-type]
    return CircuitBreaker(config, clock=clock, on_change=changes.append), clock, changes


def test_opens_after_consecutive_failures() -> None:
    """failure_threshold failures in a row open it; a success in between resets the count."""
    breaker, _, changes = _breaker()
    breaker.record_failure()
    breaker.record_failure()
    breaker.record_success()
    breaker.record_failure()
    breaker.record_failure()
    assert breaker.allow()
    breaker.record_failure()
    assert breaker.state is BreakerState.OPEN
    assert not breaker.allow()
    assert changes == [BreakerState.OPEN]


def test_half_open_after_open_for_admits_limited_probes() -> None:
    """After open_for, at most half_open_max probes go through at once."""
    breaker, clock, _ = _breaker(half_open_max=2)
    for _ in range(3):
        breaker.record_failure()
    clock.now += 9.9
    assert not breaker.allow()
    assert breaker.retry_after() > 0
    clock.now += 0.1
    assert breaker.state is BreakerState.HALF_OPEN
    assert breaker.allow()
    assert breaker.allow()
    assert not breaker.allow()


def test_probe_success_closes_and_failure_reopens() -> None:
    """A good probe closes the breaker; a bad one opens it for another open_for."""
    breaker, clock, changes = _breaker()
    for _ in range(3):
        breaker.record_failure()
    clock.now += 10
    assert breaker.allow()
    breaker.record_failure()
    assert breaker.state is BreakerState.OPEN
    clock.now += 10
    assert breaker.allow()
    breaker.record_success()
    assert breaker.state is BreakerState.CLOSED
    assert breaker.retry_after() == 0
    assert changes == [
        BreakerState.OPEN,
        BreakerState.HALF_OPEN,
        BreakerState.OPEN,
        BreakerState.HALF_OPEN,
        BreakerState.CLOSED,
    ]


def test_failures_counts_consecutive_failures_through_open_and_half_open() -> None:
    """`failures` is the run of failures since the last success, whatever the state."""
    breaker, clock, _ = _breaker()
    assert breaker.failures == 0
    breaker.record_failure()
    breaker.record_failure()
    assert breaker.failures == 2
    breaker.record_success()
    assert breaker.failures == 0
    for _ in range(3):
        breaker.record_failure()
    clock.now += 10
    assert breaker.allow()
    assert breaker.failures == 3
    breaker.record_failure()
    assert (breaker.state, breaker.failures) == (BreakerState.OPEN, 4)
