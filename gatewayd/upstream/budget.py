"""A retry budget in the manner of Envoy's: retries are a bounded share of traffic.

Without one, a failing upstream receives `attempts` times the normal traffic
exactly when it can least take it. Here retries within a sliding window of
about ten seconds may reach `ratio` times the requests seen in that window, but
never fewer than `floor` (3): a quiet gateway with two requests a minute should
still retry a dropped connection. Envoy budgets concurrent retries against
concurrent requests; counting over a window instead behaves the same under
steady load and stays meaningful for short, bursty LLM traffic.

The window is kept as ten one-second buckets, so recording is O(1) and a check
sums ten numbers; only the retry path checks.
"""

from __future__ import annotations

import time
from collections.abc import Callable

DEFAULT_FLOOR = 3
DEFAULT_WINDOW = 10.0
_BUCKETS = 10


class RetryBudget:
    """Counts requests and retries over a sliding window and says whether
    one more retry fits."""

    __slots__ = ("_clock", "_floor", "_ratio", "_requests", "_retries", "_stamps", "_width")

    def __init__(
        self,
        ratio: float,
        *,
        floor: int = DEFAULT_FLOOR,
        window: float = DEFAULT_WINDOW,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._ratio = ratio
        self._floor = floor
        self._width = window / _BUCKETS
        self._clock = clock
        # _stamps[i] is the tick (clock / width) bucket i currently counts;
        # a bucket whose tick fell out of the window is stale and reads as zero.
        self._stamps = [-1] * _BUCKETS
        self._requests = [0] * _BUCKETS
        self._retries = [0] * _BUCKETS

    def record_request(self) -> None:
        """Count one new request (not its retries)."""
        self._requests[self._bucket()] += 1

    def record_retry(self) -> None:
        """Count one retry that is about to be made."""
        self._retries[self._bucket()] += 1

    def allows_retry(self) -> bool:
        """Would one more retry stay within the budget?"""
        requests, retries = self.counts()
        return retries < max(self._floor, self._ratio * requests)

    def counts(self) -> tuple[int, int]:
        """Requests and retries within the current window."""
        oldest = int(self._clock() / self._width) - _BUCKETS + 1
        requests = retries = 0
        for i, stamp in enumerate(self._stamps):
            if stamp >= oldest:
                requests += self._requests[i]
                retries += self._retries[i]
        return requests, retries

    def _bucket(self) -> int:
        tick = int(self._clock() / self._width)
        i = tick % _BUCKETS
        if self._stamps[i] != tick:
            self._stamps[i] = tick
            self._requests[i] = 0
            self._retries[i] = 0
        return i
