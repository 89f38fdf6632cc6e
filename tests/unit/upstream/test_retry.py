"""Retry conditions, full-jitter backoff and Retry-After parsing."""

from __future__ import annotations

import pytest

from gatewayd.config.schema import RetryConfig
from gatewayd.upstream.retry import RetryPolicy, parse_retry_after


def _upper_bound(_low: float, high: float) -> float:
    """A stand-in for random.uniform that always picks the ceiling."""
    return high


def test_default_conditions_are_connect_502_503() -> None:
    """The default retries refused connections and 502/503, nothing that may have billed."""
    policy = RetryPolicy(RetryConfig())
    assert policy.on_failure("connect")
    assert not policy.on_failure("timeout")
    assert [s for s in (400, 429, 500, 502, 503, 504) if policy.on_status(s)] == [502, 503]


def test_status_classes_and_timeout_are_parsed() -> None:
    """ "5xx" covers the class, "timeout" enables timeout retries, case and spaces aside."""
    policy = RetryPolicy(RetryConfig(on=(" Timeout", "5XX", "429")))
    assert policy.on_failure("timeout")
    assert not policy.on_failure("connect")
    assert [s for s in (429, 500, 599) if policy.on_status(s)] == [429, 500, 599]
    assert not policy.on_status(404)


@pytest.mark.parametrize("token", ["reset", "5x", "600", "9xx", ""])
def test_unknown_condition_is_rejected(token: str) -> None:
    """A condition outside connect/timeout/NNN/Nxx is an error, not silently ignored."""
    with pytest.raises(ValueError, match="unknown retry condition"):
        RetryPolicy(RetryConfig(on=(token,)))


def test_backoff_ceiling_doubles_up_to_backoff_max() -> None:
    """The jitter ceiling is backoff_base * 2**n, capped at backoff_max."""
    policy = RetryPolicy(RetryConfig(backoff_base=0.1, backoff_max=0.5), uniform=_upper_bound)
    assert [policy.delay(n) for n in range(5)] == pytest.approx([0.1, 0.2, 0.4, 0.5, 0.5])
    assert policy.delay(10_000) == pytest.approx(0.5)


def test_backoff_is_uniform_between_zero_and_ceiling() -> None:
    """Real jitter stays within [0, ceiling] and is not constant."""
    policy = RetryPolicy(RetryConfig(backoff_base=0.1, backoff_max=2.0))
    delays = [policy.delay(2) for _ in range(200)]
    assert all(d is not None and 0.0 <= d <= 0.4 for d in delays)
    assert len(set(delays)) > 1


def test_retry_after_replaces_jitter_only_up_to_backoff_max() -> None:
    """A short Retry-After is obeyed exactly; a longer one means no retry."""
    policy = RetryPolicy(RetryConfig(backoff_max=2.0), uniform=_upper_bound)
    assert policy.delay(0, retry_after=1.5) == 1.5
    assert policy.delay(0, retry_after=2.0) == 2.0
    assert policy.delay(0, retry_after=30.0) is None


def test_attempts_never_below_one() -> None:
    """attempts: 0 still sends the request once."""
    assert RetryPolicy(RetryConfig(attempts=0)).attempts == 1


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("3", 3.0),
        (" 0.25 ", 0.25),
        ("0", 0.0),
        (None, None),
        ("", None),
        ("-1", None),
        ("nan", None),
        ("inf", None),
        ("Wed, 21 Oct 2015 07:28:00 GMT", None),
    ],
)
def test_parse_retry_after(value: str | None, expected: float | None) -> None:
    """Retry-After seconds parse; dates, negatives and non-numbers read as absent."""
    assert parse_retry_after(value) == expected
