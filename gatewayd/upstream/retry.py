"""Whether an attempt's Outcome earns another try, and how long to wait first:
one decision, `RetryPolicy.decide`, over one outcome.

Conditions (RetryConfig.on) use Envoy's names, which say how far the request got:

    connect-failure        no connection was made               safe: nothing was sent
    reset-before-request   a pooled connection was found closed  safe: nothing was written
    reset                  closed or reset after sending         may bill twice
    timeout                no response headers in time           may bill twice
    429, NNN, 5xx          a response status or class            the upstream said so

`connect` (older configs) stands for connect-failure and reset-before-request.
An `x-should-retry: true|false` response header (OpenAI sends it) overrides
the status rule either way.

Waiting: when another, untried target remains the retry goes there at once.
Otherwise an upstream hint (retry-after-ms, then Retry-After in seconds or as
an HTTP date) is waited out exactly if it is at most retry_after_max and ends
before the deadline; a longer one returns the response to the client, whose
SDK backs off itself. Without a hint the wait is "full jitter":
uniform(0, min(backoff_max, backoff_base * 2**n)) for the n-th retry (0-based).
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Mapping
from email.utils import parsedate_to_datetime

from gatewayd.config.schema import RetryConfig
from gatewayd.upstream.outcome import (
    CONNECT_FAILURE,
    RESET,
    RESET_BEFORE_REQUEST,
    RESPONSE,
    TIMEOUT,
    Outcome,
)

_LEGACY_CONNECT = "connect"
_FAILURE_CONDITIONS = frozenset({CONNECT_FAILURE, RESET_BEFORE_REQUEST, RESET, TIMEOUT})


class RetryPolicy:
    """Retry conditions and waits of one upstream, parsed once from config."""

    __slots__ = (
        "_after_max",
        "_base",
        "_classes",
        "_failures",
        "_max",
        "_statuses",
        "_uniform",
        "_wall",
        "attempts",
    )

    def __init__(
        self,
        config: RetryConfig,
        *,
        uniform: Callable[[float, float], float] = random.uniform,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.attempts = max(1, config.attempts)
        self._base = config.backoff_base
        self._max = config.backoff_max
        self._after_max = config.retry_after_max
        self._uniform = uniform
        # Retry-After as an HTTP date is measured against the wall clock.
        self._wall = wall
        failures: set[str] = set()
        statuses: set[int] = set()
        classes: set[int] = set()
        for token in config.on:
            cond = token.strip().lower()
            if cond == _LEGACY_CONNECT:
                failures.update((CONNECT_FAILURE, RESET_BEFORE_REQUEST))
            elif cond in _FAILURE_CONDITIONS:
                failures.add(cond)
            elif len(cond) == 3 and cond.isdigit() and 100 <= int(cond) <= 599:
                statuses.add(int(cond))
            elif len(cond) == 3 and cond[0] in "12345" and cond[1:] == "xx":
                classes.add(int(cond[0]))
            else:
                raise ValueError(f"unknown retry condition {token!r}")
        self._failures = frozenset(failures)
        self._statuses = frozenset(statuses)
        self._classes = frozenset(classes)

    def retryable(self, outcome: Outcome) -> bool:
        """Does the outcome match a condition (or an x-should-retry: true)?"""
        if outcome.stage != RESPONSE:
            return outcome.condition in self._failures
        should = (outcome.headers or {}).get("x-should-retry", "").strip().lower()
        if should in ("true", "false"):
            return should == "true"
        status = outcome.status
        return status in self._statuses or status // 100 in self._classes

    def decide(
        self, outcome: Outcome, attempt: int, remaining: float, *, fresh_target: bool
    ) -> float | None:
        """Seconds to wait before another attempt, or None to stop at this outcome.

        `attempt` is the 1-based number of the attempt that ended, `remaining`
        the seconds left before the request's deadline, and `fresh_target`
        whether an untried, usable target is left for the next attempt.
        """
        if attempt >= self.attempts or not self.retryable(outcome):
            return None
        if fresh_target:
            return 0.0
        hint = retry_hint(outcome.headers, self._wall) if outcome.headers else None
        if hint is not None:
            delay = hint if hint <= self._after_max else None
        else:
            # Capping the exponent keeps 2**n finite for absurd attempt counts.
            delay = self._uniform(0.0, min(self._max, self._base * 2 ** min(attempt - 1, 62)))
        if delay is None or delay >= remaining:
            return None
        return delay


def retry_hint(headers: Mapping[str, str], wall: Callable[[], float] = time.time) -> float | None:
    """Seconds the upstream asked to wait (retry-after-ms, else Retry-After), or None."""
    millis = _seconds(headers.get("retry-after-ms"))
    if millis is not None:
        return millis / 1000.0
    return parse_retry_after(headers.get("Retry-After"), wall)


def parse_retry_after(value: str | None, wall: Callable[[], float] = time.time) -> float | None:
    """Seconds from a Retry-After header (delay-seconds or an HTTP date); None when
    absent or nonsense."""
    if not value:
        return None
    seconds = _seconds(value)
    if seconds is not None:
        return seconds
    try:
        when = parsedate_to_datetime(value.strip())
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        # RFC 9110 dates are GMT; parsedate gives a naive datetime for "-0000".
        return None
    return max(0.0, when.timestamp() - wall())


def _seconds(value: str | None) -> float | None:
    if not value:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        return None
    if not math.isfinite(seconds) or seconds < 0:
        return None
    return seconds
