"""Which target an attempt goes to while targets are unproven: no more
attempts awaiting an outcome than failures left before the breaker opens,
and never a refusal (upstream/client.py's cap), over an in-memory transport."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter

from gatewayd.config.schema import BreakerConfig, RetryConfig, UpstreamConfig
from gatewayd.upstream.client import Upstream
from gatewayd.upstream.outcome import CONNECT
from tests.fakes.transport import Answer, Fault, MockTransport, Request


def _upstream(transport: MockTransport, *hosts: str) -> Upstream:
    """An Upstream over `transport` (unique name: metrics are global), threshold 5."""
    config = UpstreamConfig(
        name=f"u-{uuid.uuid4().hex[:8]}",
        urls=tuple(f"http://{host}" for host in hosts),
        retry=RetryConfig(attempts=3, backoff_base=0.001),
        breaker=BreakerConfig(failure_threshold=5, open_for=30.0),
    )
    return Upstream(config, transport=transport)


async def _settle() -> None:
    """Let every runnable task run until it waits again."""
    for _ in range(20):
        await asyncio.sleep(0)


async def _post(upstream: Upstream) -> int:
    """The status one POST gets."""
    sent = await upstream.send("POST", "/v1/chat/completions", {}, b"{}")
    sent.response.release()
    return sent.response.status


def _held(answer: asyncio.Event, *, connect: bool) -> MockTransport:
    """A transport whose requests connect (or not) and are answered 200 once `answer` is set."""

    async def handler(request: Request) -> Answer:
        if connect:
            request.connect()
        await answer.wait()
        return Answer()

    return MockTransport(handler)


def _hosts(transport: MockTransport) -> Counter[str]:
    """Requests per target host."""
    return Counter(r.host for r in transport.requests)


async def test_a_burst_before_any_connect_result_tries_the_dead_target_threshold_times() -> None:
    """64 requests at once, none of three targets reached yet: 5 attempts go to
    each, the rest wait for news; the dead one is tried exactly 5 times and
    every request is answered."""
    results = asyncio.Event()

    async def handler(request: Request) -> Answer:
        await results.wait()
        if request.host == "dead.test":
            raise Fault(CONNECT)
        return Answer()

    transport = MockTransport(handler)
    upstream = _upstream(transport, "a.test", "b.test", "dead.test")
    await upstream.start()
    burst = asyncio.gather(*(_post(upstream) for _ in range(64)))
    await _settle()
    assert _hosts(transport) == {"a.test": 5, "b.test": 5, "dead.test": 5}
    results.set()
    assert await burst == [200] * 64
    assert _hosts(transport)["dead.test"] == 5
    assert upstream.status()["breaker"] == "degraded"


async def test_waiting_requests_go_out_on_a_connect_not_an_answer() -> None:
    """Requests held back while every target is unreached leave as soon as one
    connection is made, without waiting for a (slow) answer."""
    connect, answer = asyncio.Event(), asyncio.Event()

    async def handler(request: Request) -> Answer:
        await connect.wait()
        request.connect()
        await answer.wait()
        return Answer()

    transport = MockTransport(handler)
    upstream = _upstream(transport, "a.test", "b.test")
    await upstream.start()
    burst = asyncio.gather(*(_post(upstream) for _ in range(14)))
    await _settle()
    assert len(transport.requests) == 10
    connect.set()
    await _settle()
    assert len(transport.requests) == 14
    answer.set()
    assert await burst == [200] * 14


async def test_a_failing_target_takes_threshold_minus_failures_and_the_rest_go_anyway() -> None:
    """With 1 and 3 failures of 5, targets hold at most 4 and 2 attempts; when
    both are full the one with fewer failures takes the rest: none is refused."""
    answer = asyncio.Event()
    transport = _held(answer, connect=True)
    upstream = _upstream(transport, "a.test", "b.test")
    await upstream.start()
    upstream.breakers[0].record_failure()
    for _ in range(3):
        upstream.breakers[1].record_failure()
    burst = asyncio.gather(*(_post(upstream) for _ in range(10)))
    await _settle()
    assert _hosts(transport) == {"a.test": 8, "b.test": 2}
    answer.set()
    assert await burst == [200] * 10


async def test_a_proven_target_is_not_capped() -> None:
    """Once a target has answered, attempts on it are bounded by nothing but load."""
    answer = asyncio.Event()
    transport = _held(answer, connect=True)
    upstream = _upstream(transport, "a.test", "b.test")
    await upstream.start()
    answer.set()
    assert [await _post(upstream) for _ in range(2)] == [200, 200]
    answer.clear()
    burst = asyncio.gather(*(_post(upstream) for _ in range(30)))
    await _settle()
    assert _hosts(transport) == {"a.test": 16, "b.test": 16}
    answer.set()
    assert await burst == [200] * 30


async def test_one_target_is_never_capped() -> None:
    """A single-target upstream sends a whole burst at once, reached or not."""
    answer = asyncio.Event()
    transport = _held(answer, connect=False)
    upstream = _upstream(transport, "a.test")
    await upstream.start()
    burst = asyncio.gather(*(_post(upstream) for _ in range(64)))
    await _settle()
    assert len(transport.requests) == 64
    answer.set()
    assert await burst == [200] * 64


class Clock:
    """A monotonic clock the test steps by hand."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


async def test_an_ejected_target_gets_its_probe_and_once_proven_its_share() -> None:
    """After open_for a dead target gets exactly its one half-open probe out of a
    burst; once a probe succeeds it takes its share of the next burst."""
    alive = {"b.test": False}

    async def handler(request: Request) -> Answer:
        await asyncio.sleep(0)
        if not alive.get(request.host, True):
            raise Fault(CONNECT)
        request.connect()
        return Answer()

    clock = Clock()
    transport = MockTransport(handler)
    config = UpstreamConfig(
        name=f"u-{uuid.uuid4().hex[:8]}",
        urls=("http://a.test", "http://b.test"),
        retry=RetryConfig(attempts=3, backoff_base=0.001),
        breaker=BreakerConfig(failure_threshold=5, open_for=30.0),
    )
    upstream = Upstream(config, transport=transport, clock=clock)
    await upstream.start()
    assert await asyncio.gather(*(_post(upstream) for _ in range(30))) == [200] * 30
    assert _hosts(transport)["b.test"] == 5
    clock.now += 30
    assert await asyncio.gather(*(_post(upstream) for _ in range(30))) == [200] * 30
    assert _hosts(transport)["b.test"] == 6
    alive["b.test"] = True
    clock.now += 30
    assert await asyncio.gather(*(_post(upstream) for _ in range(30))) == [200] * 30
    assert _hosts(transport)["b.test"] > 6
    transport.requests.clear()
    assert await asyncio.gather(*(_post(upstream) for _ in range(30))) == [200] * 30
    assert _hosts(transport) == {"a.test": 15, "b.test": 15}
