"""Leases of Redis budgets, against a real Redis: fewer round trips, never more than the budget."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from gatewayd.errors import RateLimiterUnavailable
from gatewayd.ratelimit.backend import Ask
from gatewayd.ratelimit.gcra import Rate
from gatewayd.ratelimit.leases import Leases
from gatewayd.ratelimit.redis_backend import RedisBackend, Taken
from gatewayd.redis_client import RedisClient


class CountingBackend(RedisBackend):
    """The real backend, counting the Redis calls it makes."""

    calls = 0

    async def take(
        self, ask: Ask, want_requests: int, want_tokens: int, back_requests: int, back_tokens: int
    ) -> Taken:
        self.calls += 1
        return await super().take(ask, want_requests, want_tokens, back_requests, back_tokens)

    async def settle(self, ask: Ask, used: int | None) -> None:
        self.calls += 1
        await super().settle(ask, used)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[RedisClient]:
    redis = RedisClient(redis_url)
    yield redis
    await redis.close()


def _instance(client: RedisClient, clock: Clock) -> tuple[Leases, CountingBackend]:
    backend = CountingBackend(client, 2.0)
    return Leases(backend, 1000, clock), backend


# Slow enough that nothing refills during a test: the burst is all there is.
SLOW = Rate.per_minute(1, 320)


def _ask(requests: Rate | None = SLOW, tokens: Rate | None = None, cost: int = 0) -> Ask:
    return Ask("*:client:app", requests, tokens, cost, 0, "", 60.0)


async def test_a_busy_key_asks_redis_a_few_times_not_every_request(client: RedisClient) -> None:
    """A hundred requests in a row: leases double up to 1/16 of the burst of 320."""
    leases, backend = _instance(client, Clock())
    answers = [await leases.acquire(_ask()) for _ in range(100)]
    assert all(a.refused is None for a in answers)
    # 1, 2, 4, 8, 16, then 20 (320 / 16) at a time.
    assert backend.calls == 5 + 4
    # The headers count what this instance still holds as remaining.
    remaining = [a.requests.remaining for a in answers if a.requests is not None]
    assert remaining[0] == 319
    assert remaining[-1] == 220


async def test_two_instances_never_take_more_than_the_budget(client: RedisClient) -> None:
    """Racing each other, two instances let through exactly the burst: a lease is
    renewed only once spent, so neither holds anything back when Redis refuses."""
    clock = Clock()
    one, _ = _instance(client, clock)
    two, _ = _instance(client, clock)

    async def hammer(leases: Leases) -> int:
        allowed = 0
        for _ in range(400):
            allowed += (await leases.acquire(_ask())).refused is None
        return allowed

    allowed = await asyncio.gather(*(hammer(leases) for leases in (one, two, one, two)))
    assert allowed[0] + allowed[2] > 0
    assert allowed[1] + allowed[3] > 0
    # One more at most: Redis's own clock refills one a minute.
    assert 320 <= sum(allowed) <= 321


async def test_leftovers_go_back_with_the_next_lease(client: RedisClient) -> None:
    """A lease that outlives its units gives them back, and the next one is smaller."""
    clock = Clock()
    one, backend = _instance(client, clock)
    two, _ = _instance(client, clock)
    for _ in range(40):
        assert (await one.acquire(_ask())).refused is None
    # Leased 51 (1 + 2 + 4 + 8 + 16 + 20), spent 40; the 11 left outlive the lease.
    clock.now += 1.0
    answer = await one.acquire(_ask())
    # Given back with a lease half the size: 16, one of them spent now.
    assert backend.calls == 7
    assert answer.requests is not None
    assert answer.requests.remaining == 320 - 41
    allowed = 0
    while (await two.acquire(_ask())).refused is None:
        allowed += 1
    # All but what was spent and the 15 the first instance still holds.
    assert 320 - 41 - 15 <= allowed <= 320 - 41 - 15 + 1


async def test_a_small_burst_is_never_leased(client: RedisClient) -> None:
    """Under a burst of 16 nothing is held back: each request asks Redis."""
    leases, backend = _instance(client, Clock())
    ask = _ask(Rate.per_minute(1, 15))
    answers = [await leases.acquire(ask) for _ in range(20)]
    assert [a.refused for a in answers] == [None] * 15 + ["requests"] * 5
    # The first refusal stands until its retry-after: no more calls for the rest.
    assert backend.calls == 16
    assert answers[-1].retry_after == pytest.approx(60.0, abs=1.0)


async def test_concurrent_requests_share_one_renewal(client: RedisClient) -> None:
    """Fifty requests at once on a fresh key: renewals one at a time, each lease larger."""
    leases, backend = _instance(client, Clock())
    answers = await asyncio.gather(*(leases.acquire(_ask()) for _ in range(50)))
    assert all(a.refused is None for a in answers)
    assert backend.calls <= 7


async def test_requests_waiting_on_a_failed_renewal_fail_with_it() -> None:
    """With a Redis that never answers, requests on one key fail together after
    one timeout, not one timeout after another."""
    held: list[asyncio.StreamWriter] = []

    async def silent(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    mute = RedisClient(f"redis://127.0.0.1:{port}/0")
    leases = Leases(RedisBackend(mute, 0.2), 1000)
    loop = asyncio.get_running_loop()
    started = loop.time()
    try:
        results = await asyncio.gather(
            *(leases.acquire(_ask()) for _ in range(20)), return_exceptions=True
        )
    finally:
        await mute.close()
        for writer in held:
            writer.close()
        server.close()
    assert all(isinstance(r, RateLimiterUnavailable) for r in results)
    assert loop.time() - started < 1.0


async def test_unused_tokens_go_back_to_the_lease_then_to_redis(client: RedisClient) -> None:
    """Tokens not used stay here up to the lease's bound (1/16 of 16,000); the rest
    goes to Redis, and what the lease holds goes back when it runs out."""
    clock = Clock()
    leases, backend = _instance(client, clock)
    ask = _ask(None, Rate.per_minute(1, 16_000), cost=600)
    assert (await leases.acquire(ask)).refused is None
    await leases.settle(ask, 0)
    # The 600 given back are spent here, without Redis.
    answer = await leases.acquire(ask)
    assert backend.calls == 1
    assert answer.tokens is not None
    assert answer.tokens.remaining == 16_000 - 600
    # A lease of 1000 (the bound), 600 of it spent.
    assert (await leases.acquire(ask)).refused is None
    assert backend.calls == 2
    await leases.settle(ask, 0)
    assert backend.calls == 2
    # Holding 1000 already: this refund goes to Redis, in the background.
    await leases.settle(ask, 0)
    await leases.settled()
    assert backend.calls == 3
    clock.now += 1.0
    answer = await leases.acquire(ask)
    # Nothing used at all: with the lease's 1000 back, only this request's 600 is taken.
    assert answer.tokens is not None
    assert answer.tokens.remaining == 16_000 - 600


async def test_a_slot_is_freed_in_the_background(client: RedisClient) -> None:
    """Under max_concurrent every request asks Redis; its slot goes back after the answer."""
    leases, backend = _instance(client, Clock())
    ask = Ask("*:client:app", SLOW, None, 0, 1, "one", 60.0)
    assert (await leases.acquire(ask)).refused is None
    assert (await leases.acquire(ask._replace(lease="two"))).refused == "concurrency"
    await leases.settle(ask, None)
    assert backend.calls == 2
    await leases.settled()
    assert backend.calls == 3
    assert (await leases.acquire(ask._replace(lease="three"))).refused is None


async def test_a_changed_rate_starts_a_new_lease(client: RedisClient) -> None:
    """After a reload changes the rate, the old lease is not spent."""
    leases, backend = _instance(client, Clock())
    for _ in range(4):
        await leases.acquire(_ask())
    calls = backend.calls
    await leases.acquire(_ask(Rate.per_minute(2, 320)))
    assert backend.calls == calls + 1
