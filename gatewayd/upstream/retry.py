"""Which upstream failures are worth another try, and how long to wait first.

Conditions (RetryConfig.on): "connect" (refused, reset, DNS failure, connect
timeout, or the connection dropped before response headers), "timeout" (no
response headers within the timeouts), "NNN" (one status), "Nxx" (a class).

Backoff is "full jitter": uniform(0, min(backoff_max, backoff_base * 2**n))
for the n-th retry (0-based), which spreads retries of many clients apart.
A Retry-After in seconds on 429/503 replaces the jitter when it is at most
backoff_max; a longer one means the upstream asked for more patience than
this gateway will spend, so the response goes back to the client instead.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable

from gatewayd.config.schema import RetryConfig

CONNECT = "connect"
TIMEOUT = "timeout"
# Statuses whose Retry-After header this gateway honours.
RETRY_AFTER_STATUSES = frozenset({429, 503})


class RetryPolicy:
    """Retry conditions and backoff of one upstream, parsed once from config."""

    __slots__ = (
        "_base",
        "_classes",
        "_max",
        "_on_connect",
        "_on_timeout",
        "_statuses",
        "_uniform",
        "attempts",
    )

    def __init__(
        self,
        config: RetryConfig,
        *,
        uniform: Callable[[float, float], float] = random.uniform,
    ) -> None:
        self.attempts = max(1, config.attempts)
        self._base = config.backoff_base
        self._max = config.backoff_max
        self._uniform = uniform
        self._on_connect = False
        self._on_timeout = False
        statuses: set[int] = set()
        classes: set[int] = set()
        for token in config.on:
            cond = token.strip().lower()
            if cond == CONNECT:
                self._on_connect = True
            elif cond == TIMEOUT:
                self._on_timeout = True
            elif len(cond) == 3 and cond.isdigit() and 100 <= int(cond) <= 599:
                statuses.add(int(cond))
            elif len(cond) == 3 and cond[0] in "12345" and cond[1:] == "xx":
                classes.add(int(cond[0]))
            else:
                raise ValueError(f"unknown retry condition {token!r}")
        self._statuses = frozenset(statuses)
        self._classes = frozenset(classes)

    def on_failure(self, reason: str) -> bool:
        """Is a failure without a response ("connect" or "timeout") retryable?"""
        return (reason == CONNECT and self._on_connect) or (reason == TIMEOUT and self._on_timeout)

    def on_status(self, status: int) -> bool:
        """Is a response with this status retryable?"""
        return status in self._statuses or status // 100 in self._classes

    def delay(self, retry_index: int, retry_after: float | None = None) -> float | None:
        """Seconds to sleep before retry number `retry_index` (0-based), or None
        when the upstream's Retry-After is longer than backoff_max."""
        if retry_after is not None:
            return retry_after if retry_after <= self._max else None
        # Capping the exponent keeps 2**n finite for absurd attempt counts.
        ceiling = min(self._max, self._base * 2 ** min(retry_index, 62))
        return self._uniform(0.0, ceiling)


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header; None when absent, a date, or nonsense."""
    if not value:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        return None
    if not math.isfinite(seconds) or seconds < 0:
        return None
    return seconds
