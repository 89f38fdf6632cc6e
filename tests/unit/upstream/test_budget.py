"""The retry budget: a floor of retries, a share of requests, a sliding window."""

from __future__ import annotations

from gatewayd.upstream.budget import RetryBudget


class FakeClock:
    """A monotonic clock that tests move by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _spend(budget: RetryBudget) -> int:
    """Take retries while the budget allows, returning how many were taken."""
    taken = 0
    while budget.allows_retry():
        budget.record_retry()
        taken += 1
    return taken


def test_floor_allows_retries_on_a_quiet_gateway() -> None:
    """With a single request, the floor of three retries still applies."""
    budget = RetryBudget(0.2, clock=FakeClock())
    budget.record_request()
    assert _spend(budget) == 3


def test_ratio_caps_retries_under_load() -> None:
    """With 100 requests in the window, a 0.2 ratio allows 20 retries."""
    budget = RetryBudget(0.2, clock=FakeClock())
    for _ in range(100):
        budget.record_request()
    assert _spend(budget) == 20
    assert budget.counts() == (100, 20)


def test_window_slides_old_traffic_out() -> None:
    """Retries spent ten seconds ago no longer count; nor do their requests."""
    clock = FakeClock()
    budget = RetryBudget(0.2, clock=clock)
    for _ in range(50):
        budget.record_request()
    assert _spend(budget) == 10
    clock.now += 5.0
    assert not budget.allows_retry()
    clock.now += 5.0
    assert budget.counts() == (0, 0)
    assert _spend(budget) == 3


def test_partial_slide_keeps_recent_buckets() -> None:
    """Only buckets older than the window are dropped; newer ones still count."""
    clock = FakeClock()
    budget = RetryBudget(0.5, window=10.0, clock=clock)
    budget.record_request()
    clock.now += 4.0
    for _ in range(3):
        budget.record_request()
    clock.now += 6.5
    assert budget.counts() == (3, 0)
