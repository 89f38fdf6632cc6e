"""This instance's leases on budgets kept in Redis: most decisions made here, none over budget.

A Redis round trip per request costs more than everything else the limiter
does, so for a busy key this instance takes several units at once (a lease)
and spends them here until they run out or the lease's time is up. A lease
was taken from the shared budget when it was leased, so the instances
together never take more than the budget allows; the price is that units
one instance holds are not available to another meanwhile. That is bounded:

- a lease holds at most 1/_SHARE of a budget's capacity, so a small burst
  is never leased: each request asks Redis, as it would without leases;
- a lease is spent for _LEASE_FOR seconds at most; what it has left goes back
  to Redis with the key's next lease (an idle key's leftovers stay taken
  until its budget refills by itself);
- the next lease of a key is twice as large when the last one ran out early
  and half as large when one outlived its units, so a busy key asks Redis a
  few times per _LEASE_FOR and a quiet one leases a unit at a time.

One renewal per key is in flight at once: requests arriving meanwhile wait
for it rather than each leasing more, and share its failure if it fails. A
request refused for its request budget makes the same key's requests
refused here until its retry-after (a request budget only refills with
time), so a flood of refused requests does not become a flood of Redis
calls.

Concurrency limits are decided in Redis on every request: a slot is one
request's and is never leased. Tokens a request did not use go back to the
key's live lease (up to its bound), the rest to Redis. Settling in Redis (a
slot freed, tokens corrected) runs in the background: the client's answer
does not wait for it, and a Redis that fails it is counted, not raised.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from gatewayd.errors import RateLimiterUnavailable
from gatewayd.observability import metrics
from gatewayd.ratelimit.backend import Answer, Ask
from gatewayd.ratelimit.gcra import Rate, Take
from gatewayd.ratelimit.redis_backend import RedisBackend

# How long a lease's units may be spent here.
_LEASE_FOR = 0.25
# A lease holds at most 1/_SHARE of a budget's capacity.
_SHARE = 16
# Requests' worth a lease grows to at most (the capacity bound usually comes first).
_MAX_SIZE = 1024
# Leases looked at for expiry per new key, as in the memory backend.
_SWEEP = 2


@dataclass(slots=True)
class _Lease:
    """What this instance holds of one key's budgets."""

    # The rates it was leased under: a reload that changes one ends the lease.
    requests: Rate | None
    tokens: Rate | None
    taken_at: float
    until: float
    # Units leased and not yet spent.
    left_requests: int = 0
    left_tokens: int = 0
    # Requests' worth the next lease asks for.
    size: int = 1
    # Redis's answer when leased, which the headers start from.
    answer: Answer | None = None
    # Resolved when the renewal in flight ends: with its failure, if it failed.
    renewing: asyncio.Future[RateLimiterUnavailable | None] | None = None
    # A refusal for the request budget, repeated here until `refused_until`.
    refused: Answer | None = None
    refused_until: float = 0.0


class Leases:
    """The Redis backend with leases in front; the Backend protocol of both."""

    name = "redis"

    def __init__(
        self, shared: RedisBackend, max_keys: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._shared = shared
        self._max_keys = max_keys
        self._clock = clock
        self._leases: dict[str, _Lease] = {}
        self._settling: set[asyncio.Task[None]] = set()

    async def warm(self) -> None:
        await self._shared.warm()

    def status(self) -> dict[str, Any]:
        return {**self._shared.status(), "leases": len(self._leases)}

    async def acquire(self, ask: Ask) -> Answer:
        if ask.max_concurrent:
            return await self._shared.acquire(ask)
        while True:
            now = self._clock()
            lease = self._lease(ask, now)
            if lease.renewing is not None:
                failure = await asyncio.shield(lease.renewing)
                if failure is not None:
                    # Not a Redis call each, one after the other, for a Redis that is away.
                    raise RateLimiterUnavailable(failure.kind)
                continue
            if lease.refused is not None and now < lease.refused_until:
                return lease.refused._replace(retry_after=lease.refused_until - now)
            if now < lease.until and _fits(lease, ask):
                if ask.requests is not None:
                    lease.left_requests -= 1
                lease.left_tokens -= ask.cost if ask.tokens is not None else 0
                return _answer(lease, now)
            return await self._renew(ask, lease, now)

    async def settle(self, ask: Ask, used: int | None) -> None:
        """Settle on the lease where it can; what needs Redis goes out in the
        background, so the answer does not wait a round trip for it."""
        if ask.max_concurrent:
            self._later(ask, used)
            return
        tokens = ask.tokens
        if tokens is None or used is None or used == ask.cost:
            return
        delta = used - ask.cost
        lease = self._leases.get(ask.key)
        if lease is not None and lease.tokens == tokens and self._clock() < lease.until:
            if delta < 0:
                credit = min(-delta, max(0, tokens.capacity // _SHARE - lease.left_tokens))
                lease.left_tokens += credit
                delta += credit
            elif lease.left_tokens >= delta:
                lease.left_tokens -= delta
                delta = 0
        if delta:
            self._later(ask, ask.cost + delta)

    async def settled(self) -> None:
        """Wait for the settlements still out (each bounded by redis_timeout)."""
        await asyncio.gather(*self._settling)

    def _later(self, ask: Ask, used: int | None) -> None:
        task = asyncio.get_running_loop().create_task(self._settle(ask, used))
        # Held until done: the loop keeps only weak references to tasks.
        self._settling.add(task)
        task.add_done_callback(self._settling.discard)

    async def _settle(self, ask: Ask, used: int | None) -> None:
        try:
            await self._shared.settle(ask, used)
        except RateLimiterUnavailable as exc:
            # The reservation stands and the slot's lease runs out by itself.
            metrics.child(metrics.RATELIMIT_BACKEND_ERRORS, exc.kind).inc()

    def _lease(self, ask: Ask, now: float) -> _Lease:
        lease = self._leases.get(ask.key)
        if lease is not None and (lease.requests == ask.requests and lease.tokens == ask.tokens):
            return lease
        if lease is None:
            self._make_room(now)
        # New, or leased under rates a reload changed: its leftovers are not
        # given back, since they were counted at the old rates.
        lease = _Lease(ask.requests, ask.tokens, now, now)
        self._leases[ask.key] = lease
        return lease

    async def _renew(self, ask: Ask, lease: _Lease, now: float) -> Answer:
        if now < lease.until:
            lease.size = min(lease.size * 2, _MAX_SIZE)
        elif lease.left_requests > 0 or lease.left_tokens > 0:
            lease.size = max(1, lease.size // 2)
        requests = _wanted(ask.requests, lease.size, 1)
        tokens = _wanted(ask.tokens, lease.size, ask.cost)
        # Given back with this call: detached first, so a failed call cannot
        # give them back twice (losing them is the safe side).
        back_requests, back_tokens = lease.left_requests, lease.left_tokens
        lease.left_requests = lease.left_tokens = 0
        renewing = lease.renewing = asyncio.get_running_loop().create_future()
        failure = None
        try:
            taken = await self._shared.take(ask, requests, tokens, back_requests, back_tokens)
        except RateLimiterUnavailable as exc:
            failure = exc
            raise
        finally:
            renewing.set_result(failure)
            lease.renewing = None
        answer = taken.answer
        now = self._clock()
        if answer.refused is not None:
            lease.until = now
            if answer.refused == "requests":
                lease.refused, lease.refused_until = answer, now + answer.retry_after
            return answer
        lease.refused = None
        lease.answer, lease.taken_at, lease.until = answer, now, now + _LEASE_FOR
        # Added, not set: tokens given back while the call was out stay.
        lease.left_requests += taken.requests - 1 if ask.requests is not None else 0
        lease.left_tokens += taken.tokens - ask.cost if ask.tokens is not None else 0
        return _answer(lease, now)

    def _make_room(self, now: float) -> None:
        """Drop run-out leases from the old end, and the oldest one when full."""
        leases = self._leases
        for _ in range(_SWEEP):
            if not leases:
                return
            oldest = next(iter(leases))
            lease = leases[oldest]
            # One being renewed stays: its renewal's units would be lost.
            if lease.renewing is not None:
                return
            live = now < lease.until or now < lease.refused_until
            if live and len(leases) < self._max_keys:
                return
            del leases[oldest]


def _fits(lease: _Lease, ask: Ask) -> bool:
    return (ask.requests is None or lease.left_requests >= 1) and (
        ask.tokens is None or lease.left_tokens >= ask.cost
    )


def _wanted(rate: Rate | None, size: int, need: int) -> int:
    """Units to ask Redis for: `size` requests' worth, within the lease bound."""
    if rate is None:
        return 0
    return max(need, min(need * size, rate.capacity // _SHARE))


def _answer(lease: _Lease, now: float) -> Answer:
    """What the headers say: Redis's remaining when leased plus what is left here."""
    answer = lease.answer
    assert answer is not None
    elapsed = now - lease.taken_at
    return Answer(
        None,
        0.0,
        _local(answer.requests, lease.left_requests, elapsed),
        _local(answer.tokens, lease.left_tokens, elapsed),
    )


def _local(take: Take | None, left: int, elapsed: float) -> Take | None:
    if take is None:
        return None
    return take._replace(remaining=take.remaining + left, reset=max(0.0, take.reset - elapsed))
