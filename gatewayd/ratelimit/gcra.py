"""GCRA, the generic cell rate algorithm: a leaky bucket kept as one timestamp.

A budget of `capacity` units refilling one unit every `interval` seconds is
held as its theoretical arrival time (TAT): when the bucket would be empty
again. Taking `cost` units moves TAT forward by `cost * interval`, and is
allowed while TAT stays within `capacity * interval` of now. There are no
windows, so no client is locked out until a minute boundary and none gets
twice its rate across one.

The same arithmetic runs in this process (memory backend) and in Redis's
Lua (redis backend, see `gatewayd.ratelimit.redis_backend`); these functions
are its reference, tested with an injected clock.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple


@dataclass(frozen=True, slots=True)
class Rate:
    """`capacity` units at once from idle, refilled one per `interval` seconds."""

    interval: float
    capacity: int

    @classmethod
    def per_minute(cls, amount: int, capacity: int) -> Rate:
        return cls(60.0 / amount, capacity)

    @property
    def tolerance(self) -> float:
        return self.capacity * self.interval


class Take(NamedTuple):
    """The answer for one budget: allowed or not, and what the headers say."""

    allowed: bool
    tat: float
    # Seconds until the cost would fit (0 when allowed).
    retry_after: float
    remaining: int
    # Seconds until the budget is whole again.
    reset: float


def take(tat: float | None, now: float, rate: Rate, cost: int) -> Take:
    """Try to take `cost` units from the budget whose TAT is `tat` (None: idle)."""
    start = now if tat is None or tat < now else tat
    new_tat = start + cost * rate.interval
    if new_tat - now > rate.tolerance:
        return Take(
            False,
            start,
            retry_after=new_tat - rate.tolerance - now,
            remaining=_remaining(start, now, rate),
            reset=start - now,
        )
    return Take(True, new_tat, 0.0, _remaining(new_tat, now, rate), new_tat - now)


def give_back(tat: float | None, now: float, rate: Rate, delta: int) -> float | None:
    """The TAT after settling a reservation: `delta` more units used (or fewer, negative)."""
    if tat is None:
        return None if delta <= 0 else now + delta * rate.interval
    if delta > 0:
        return max(tat, now) + delta * rate.interval
    # A refund may take TAT below now: that only means the budget is whole.
    return tat + delta * rate.interval


def _remaining(tat: float, now: float, rate: Rate) -> int:
    # A hair of float error must not cost a whole unit.
    left = (rate.tolerance - (tat - now)) / rate.interval
    return max(0, math.floor(left + 1e-9))
