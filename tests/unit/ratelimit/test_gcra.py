"""GCRA's arithmetic with an injected clock: bursts, steady rates, refusals and settlement."""

from __future__ import annotations

import pytest

from gatewayd.ratelimit import gcra
from gatewayd.ratelimit.gcra import Rate

RATE = Rate.per_minute(60, 3)  # one a second, three at once


def test_a_burst_then_the_steady_rate() -> None:
    """From idle, `capacity` requests pass at once; the next waits one interval."""
    tat = None
    for left in (2, 1, 0):
        take = gcra.take(tat, 100.0, RATE, 1)
        assert take.allowed
        assert take.remaining == left
        tat = take.tat
    refused = gcra.take(tat, 100.0, RATE, 1)
    assert not refused.allowed
    assert refused.retry_after == pytest.approx(1.0)
    assert gcra.take(tat, 101.0, RATE, 1).allowed


def test_no_window_boundary_doubles_the_rate() -> None:
    """Over any stretch of time at most capacity + elapsed/interval requests pass."""
    tat, passed = None, 0
    for step in range(600):  # ten a second for a minute
        take = gcra.take(tat, step / 10, RATE, 1)
        if take.allowed:
            tat, passed = take.tat, passed + 1
    assert passed <= 3 + 60


def test_a_refusal_takes_nothing() -> None:
    """A refused take leaves the budget as it was."""
    full = gcra.take(None, 0.0, RATE, 3).tat
    refused = gcra.take(full, 0.0, RATE, 1)
    assert not refused.allowed
    assert refused.tat == full


def test_reset_says_when_the_budget_is_whole() -> None:
    """`reset` is the time until every unit is back."""
    take = gcra.take(None, 0.0, RATE, 2)
    assert take.reset == pytest.approx(2.0)


def test_settling_refunds_and_charges() -> None:
    """Using fewer tokens than reserved gives them back; more moves the budget on."""
    tokens = Rate.per_minute(600, 600)  # ten a second
    reserved = gcra.take(None, 0.0, tokens, 500).tat  # 50 s of budget
    refunded = gcra.give_back(reserved, 0.0, tokens, -400)
    assert refunded == pytest.approx(10.0)
    charged = gcra.give_back(reserved, 0.0, tokens, 100)
    assert charged == pytest.approx(60.0)
    # Usage past an idle budget starts from now, not from a TAT in the past.
    assert gcra.give_back(5.0, 20.0, tokens, 10) == pytest.approx(21.0)
