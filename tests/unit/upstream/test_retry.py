"""The retry decision over one outcome: conditions, waits, Retry-After parsing."""

from __future__ import annotations

import pytest
from multidict import CIMultiDict

from gatewayd.config.schema import RetryConfig
from gatewayd.upstream.outcome import (
    CONNECT,
    CONNECT_FAILURE,
    RESET,
    RESET_BEFORE_REQUEST,
    SENT,
    TIMEOUT,
    Outcome,
)
from gatewayd.upstream.retry import RetryPolicy, parse_retry_after, retry_hint

# An HTTP date and the wall-clock second it names.
DATE = "Wed, 21 Oct 2015 07:28:00 GMT"
DATE_TS = 1445412480.0

REFUSED = Outcome(CONNECT, CONNECT_FAILURE)
STALE = Outcome(RESET_BEFORE_REQUEST, RESET_BEFORE_REQUEST)
DROPPED = Outcome(SENT, RESET)
STALLED = Outcome(SENT, TIMEOUT)


def _upper_bound(_low: float, high: float) -> float:
    """A stand-in for random.uniform that always picks the ceiling."""
    return high


def _answer(status: int, **headers: str) -> Outcome:
    """A response outcome with the given headers (underscores read as dashes)."""
    return Outcome.response(
        status, CIMultiDict({k.replace("_", "-"): v for k, v in headers.items()})
    )


def _policy(**config: object) -> RetryPolicy:
    """A policy with backoff at its ceiling and the wall clock at DATE_TS - 5."""
    return RetryPolicy(
        RetryConfig(**config),  # type: ignore[arg-type]
        uniform=_upper_bound,
        wall=lambda: DATE_TS - 5,
    )


def _decide(policy: RetryPolicy, outcome: Outcome, attempt: int = 1) -> float | None:
    """The decision with a minute left and no untried target."""
    return policy.decide(outcome, attempt, 60.0, fresh_target=False)


def test_default_retries_only_what_cannot_have_reached_the_model() -> None:
    """By default nothing that may have reached the model is retried, 429 and 502-504 are."""
    policy = _policy()
    retried = [o for o in (REFUSED, STALE, DROPPED, STALLED) if policy.retryable(o)]
    assert retried == [REFUSED, STALE]
    statuses = (400, 429, 500, 502, 503, 504)
    assert [s for s in statuses if policy.retryable(_answer(s))] == [429, 502, 503, 504]


def test_reset_and_timeout_are_opt_in() -> None:
    """reset and timeout, when listed, retry failures after sending; case and spaces aside."""
    policy = _policy(on=(" Reset", "TIMEOUT", "5XX"))
    assert [o for o in (REFUSED, STALE, DROPPED, STALLED) if policy.retryable(o)] == [
        DROPPED,
        STALLED,
    ]
    assert [s for s in (429, 500, 599, 404) if policy.retryable(_answer(s))] == [500, 599]


def test_legacy_connect_means_connect_failure_and_reset_before_request() -> None:
    """The older `connect` condition keeps meaning "nothing was sent"."""
    policy = _policy(on=("connect",))
    assert [o for o in (REFUSED, STALE, DROPPED) if policy.retryable(o)] == [REFUSED, STALE]


@pytest.mark.parametrize("token", ["reset-after", "5x", "600", "9xx", ""])
def test_unknown_condition_is_rejected(token: str) -> None:
    """A condition outside the named ones, NNN and Nxx is an error, not silently ignored."""
    with pytest.raises(ValueError, match="unknown retry condition"):
        RetryPolicy(RetryConfig(on=(token,)))


def test_x_should_retry_overrides_the_status_rule() -> None:
    """x-should-retry: true retries a 500 not listed; false stops a listed 503."""
    policy = _policy()
    assert policy.retryable(_answer(500, x_should_retry="true"))
    assert not policy.retryable(_answer(503, x_should_retry=" False"))
    assert policy.retryable(_answer(503, x_should_retry="maybe"))


def test_backoff_ceiling_doubles_up_to_backoff_max() -> None:
    """The jitter ceiling is backoff_base * 2**n for the n-th retry, capped at backoff_max."""
    policy = _policy(attempts=10, backoff_base=0.1, backoff_max=0.5)
    delays = [_decide(policy, REFUSED, attempt) for attempt in range(1, 6)]
    assert delays == pytest.approx([0.1, 0.2, 0.4, 0.5, 0.5])


def test_backoff_is_uniform_between_zero_and_ceiling() -> None:
    """Real jitter stays within [0, ceiling] and is not constant."""
    policy = RetryPolicy(RetryConfig(backoff_base=0.1, backoff_max=2.0, attempts=5))
    delays = [policy.decide(REFUSED, 3, 60.0, fresh_target=False) for _ in range(200)]
    assert all(d is not None and 0.0 <= d <= 0.4 for d in delays)
    assert len(set(delays)) > 1


def test_retry_after_is_not_capped_by_backoff_max() -> None:
    """A Retry-After of 1.5 s is waited out exactly although backoff_max is 0.5 s."""
    policy = _policy(backoff_max=0.5)
    assert _decide(policy, _answer(429, retry_after="1.5")) == 1.5


def test_retry_after_past_retry_after_max_or_the_deadline_stops() -> None:
    """A wait longer than retry_after_max, or ending past the deadline, returns the answer."""
    policy = _policy(retry_after_max=10.0)
    assert _decide(policy, _answer(429, retry_after="10")) == 10.0
    assert _decide(policy, _answer(429, retry_after="11")) is None
    answer = _answer(429, retry_after="3")
    assert policy.decide(answer, 1, 2.5, fresh_target=False) is None


def test_retry_after_ms_wins_and_dates_count_from_the_wall_clock() -> None:
    """retry-after-ms is preferred to Retry-After; an HTTP date is seconds from now."""
    policy = _policy()
    assert _decide(policy, _answer(429, retry_after="9", retry_after_ms="250")) == 0.25
    assert _decide(policy, _answer(503, retry_after=DATE)) == pytest.approx(5.0)


def test_an_untried_target_is_tried_at_once() -> None:
    """With another target left, a 429 goes there without waiting, whatever its Retry-After."""
    policy = _policy()
    answer = _answer(429, retry_after="60")
    assert policy.decide(answer, 1, 60.0, fresh_target=True) == 0.0
    assert policy.decide(DROPPED, 1, 60.0, fresh_target=True) is None


def test_last_attempt_is_never_retried() -> None:
    """attempt == attempts ends the request; attempts: 0 still sends it once."""
    policy = _policy(attempts=2)
    assert _decide(policy, REFUSED, 1) is not None
    assert _decide(policy, REFUSED, 2) is None
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
        ("soon", None),
        (DATE, 5.0),
        ("Wed, 21 Oct 2015 07:00:00 GMT", 0.0),
    ],
)
def test_parse_retry_after(value: str | None, expected: float | None) -> None:
    """Seconds and HTTP dates parse (a past date is 0); negatives and nonsense read as absent."""
    assert parse_retry_after(value, lambda: DATE_TS - 5) == expected


def test_retry_hint_ignores_a_bad_retry_after_ms() -> None:
    """A garbled retry-after-ms falls back to Retry-After."""
    headers = CIMultiDict({"retry-after-ms": "x", "Retry-After": "2"})
    assert retry_hint(headers) == 2.0
