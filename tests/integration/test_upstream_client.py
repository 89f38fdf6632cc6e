"""The upstream client against real aiohttp servers on loopback.

The fake upstream records every request it sees; its paths choose behaviour:
/status/NNN, /sequence/502,503,200 (one code per hit), /retry-after/SECONDS,
/redirect, /stall-headers, /stall-body, /gzip, and anything else echoes 200.
"""

from __future__ import annotations

import asyncio
import gzip
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from multidict import CIMultiDict, CIMultiDictProxy

from gatewayd.breaker import BreakerState
from gatewayd.config.schema import BreakerConfig, RetryConfig, Secret, UpstreamConfig
from gatewayd.errors import UpstreamTimeout, UpstreamUnavailable
from gatewayd.observability.metrics import REGISTRY
from gatewayd.upstream.client import Upstream

API_KEY = Secret("sk-upstream-test-key")


@dataclass(frozen=True)
class Seen:
    """One request as the fake upstream received it."""

    path_qs: str
    headers: CIMultiDictProxy[str]
    body: bytes
    at: float


SEEN = web.AppKey("seen", list[Seen])
RELEASE = web.AppKey("release", asyncio.Event)
ARRIVED = web.AppKey("arrived", asyncio.Event)


def _hits(app: web.Application, path: str) -> int:
    """How many requests the fake upstream received for `path`."""
    return sum(1 for s in app[SEEN] if s.path_qs == path)


async def _record(request: web.Request) -> int:
    """Record the request and return how many came before it on the same path."""
    seen = request.app[SEEN]
    before = _hits(request.app, request.path_qs)
    body = await request.read()
    at = asyncio.get_running_loop().time()
    seen.append(Seen(request.path_qs, request.headers, body, at))
    request.app[ARRIVED].set()
    return before


async def _status(request: web.Request) -> web.Response:
    await _record(request)
    return web.Response(status=int(request.match_info["code"]), text="status body")


async def _sequence(request: web.Request) -> web.Response:
    before = await _record(request)
    codes = [int(c) for c in request.match_info["codes"].split(",")]
    return web.Response(status=codes[min(before, len(codes) - 1)], text="sequence body")


async def _retry_after(request: web.Request) -> web.Response:
    if await _record(request) == 0:
        return web.Response(status=503, headers={"Retry-After": request.match_info["value"]})
    return web.Response(text="ok")


async def _redirect(request: web.Request) -> web.Response:
    await _record(request)
    return web.Response(status=302, headers={"Location": "/elsewhere"})


async def _stall_headers(request: web.Request) -> web.Response:
    await _record(request)
    await request.app[RELEASE].wait()
    return web.Response(text="late")


async def _stall_body(request: web.Request) -> web.StreamResponse:
    await _record(request)
    response = web.StreamResponse()
    await response.prepare(request)
    await response.write(b"partial")
    await request.app[RELEASE].wait()
    return response


async def _gzip(request: web.Request) -> web.Response:
    await _record(request)
    return web.Response(body=gzip.compress(b"hello"), headers={"Content-Encoding": "gzip"})


async def _echo(request: web.Request) -> web.Response:
    await _record(request)
    return web.Response(text="echo")


def _fake_upstream_app() -> web.Application:
    """An aiohttp app that plays an upstream with scripted failures."""
    app = web.Application()
    app[SEEN] = []
    app[RELEASE] = asyncio.Event()
    app[ARRIVED] = asyncio.Event()
    app.router.add_route("*", "/status/{code}", _status)
    app.router.add_route("*", "/sequence/{codes}", _sequence)
    app.router.add_route("*", "/retry-after/{value}", _retry_after)
    app.router.add_route("*", "/redirect", _redirect)
    app.router.add_route("*", "/stall-headers", _stall_headers)
    app.router.add_route("*", "/stall-body", _stall_body)
    app.router.add_route("*", "/gzip", _gzip)
    app.router.add_route("*", "/{tail:.*}", _echo)
    return app


ServerFactory = Callable[[], Awaitable[TestServer]]
UpstreamFactory = Callable[..., Awaitable[Upstream]]


@pytest.fixture
async def fake_upstream(aiohttp_server: Any) -> AsyncIterator[ServerFactory]:
    """Starts fake upstreams; stalled handlers are released before servers close."""
    servers: list[TestServer] = []

    async def start() -> TestServer:
        server: TestServer = await aiohttp_server(_fake_upstream_app())
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.app[RELEASE].set()


@pytest.fixture
def dead_url(unused_tcp_port: int) -> str:
    """A loopback URL where nothing listens, so connecting is refused at once."""
    return f"http://127.0.0.1:{unused_tcp_port}/v1"


def _base(server: TestServer, path: str = "") -> str:
    """The server's base URL with an optional path."""
    return str(server.make_url(path))


def _sample(name: str, **labels: str) -> float:
    """A metric sample's current value, 0 when it was never touched."""
    return REGISTRY.get_sample_value(name, labels) or 0.0


def _state(upstream: Upstream) -> BreakerState:
    """The first target's breaker state, read afresh (it changes with time and calls)."""
    return upstream.breakers[0].state


def _retries(upstream: Upstream, reason: str) -> float:
    """gatewayd_upstream_retries_total for one upstream and reason."""
    return _sample("gatewayd_upstream_retries_total", upstream=upstream.name, reason=reason)


async def _get(upstream: Upstream, path_qs: str, body: bytes = b"") -> int:
    """Send, read the whole body, and return the status."""
    sent = await upstream.send("POST", path_qs, {}, body)
    response = sent.response
    await response.read()
    response.release()
    return response.status


async def test_path_is_joined_under_the_target_path(
    fake_upstream: ServerFactory, make_upstream: UpstreamFactory
) -> None:
    """A base path with a trailing slash plus the request path and query arrive as one path."""
    server = await fake_upstream()
    upstream = await make_upstream(_base(server, "/v1/"))
    assert await _get(upstream, "/chat/completions?a=1&b=%2F") == 200
    assert server.app[SEEN][0].path_qs == "/v1/chat/completions?a=1&b=%2F"


async def test_headers_api_key_replaces_client_auth_and_host_follows_target(
    fake_upstream: ServerFactory, make_upstream: UpstreamFactory
) -> None:
    """The upstream's key replaces the client's, Host and length come from target and body."""
    server = await fake_upstream()
    upstream = await make_upstream(_base(server, "/v1"), api_key=API_KEY)
    client_headers = CIMultiDict(
        {
            "Authorization": "Bearer client-key",
            "Host": "client.example",
            "Content-Length": "999",
            "Content-Type": "application/json",
            "User-Agent": "OpenAI/Python 1.0",
            "X-Custom": "kept",
        }
    )
    sent = await upstream.send("POST", "/chat/completions", client_headers, b'{"a":1}')
    sent.response.release()
    seen = server.app[SEEN][0]
    assert seen.headers["Authorization"] == f"Bearer {API_KEY}"
    assert seen.headers["Host"] == f"127.0.0.1:{server.port}"
    assert seen.headers["Content-Length"] == "7"
    assert seen.body == b'{"a":1}'
    assert seen.headers["User-Agent"] == "OpenAI/Python 1.0"
    assert seen.headers["X-Custom"] == "kept"
    assert seen.headers["Content-Type"] == "application/json"


async def test_nothing_is_added_or_forwarded_without_api_key(
    fake_upstream: ServerFactory, make_upstream: UpstreamFactory
) -> None:
    """Without an api_key no Authorization goes out, and aiohttp adds no headers of its own."""
    server = await fake_upstream()
    upstream = await make_upstream(_base(server))
    sent = await upstream.send("GET", "/models", {"Authorization": "Bearer client-key"}, b"")
    sent.response.release()
    headers = server.app[SEEN][0].headers
    for name in ("Authorization", "User-Agent", "Accept", "Accept-Encoding", "Content-Type"):
        assert name not in headers
    assert "Content-Length" not in headers


async def test_compressed_body_is_relayed_as_is(
    fake_upstream: ServerFactory, make_upstream: UpstreamFactory
) -> None:
    """A gzip body arrives still compressed, with its Content-Encoding."""
    server = await fake_upstream()
    upstream = await make_upstream(_base(server))
    sent = await upstream.send("GET", "/gzip", {"Accept-Encoding": "gzip"}, b"")
    response = sent.response
    assert response.headers["Content-Encoding"] == "gzip"
    assert gzip.decompress(await response.read()) == b"hello"
    response.release()


async def test_redirect_is_relayed_not_followed(
    fake_upstream: ServerFactory, make_upstream: UpstreamFactory
) -> None:
    """A 302 comes back to the caller with its Location; the target is never fetched."""
    server = await fake_upstream()
    upstream = await make_upstream(_base(server))
    sent = await upstream.send("GET", "/redirect", {}, b"")
    sent.response.release()
    assert sent.response.status == 302
    assert sent.response.headers["Location"] == "/elsewhere"
    assert [s.path_qs for s in server.app[SEEN]] == ["/redirect"]


async def test_retries_502_and_503_until_success(
    fake_upstream: ServerFactory, make_upstream: UpstreamFactory
) -> None:
    """502 then 503 are retried; the third attempt's 200 is returned with metrics counted."""
    server = await fake_upstream()
    upstream = await make_upstream(_base(server))
    sent = await upstream.send("POST", "/sequence/502,503,200", {}, b"{}")
    sent.response.release()
    assert (sent.response.status, sent.attempts) == (200, 3)
    assert sent.target == _base(server).rstrip("/")
    assert sent.upstream_ms > 0
    assert _retries(upstream, "502") == 1
    assert _retries(upstream, "503") == 1
    duration = "gatewayd_upstream_duration_seconds_count"
    assert _sample(duration, upstream=upstream.name) == 3
    assert [s.body for s in server.app[SEEN]] == [b"{}"] * 3


async def test_last_attempt_returns_the_retryable_response(
    fake_upstream: ServerFactory, make_upstream: UpstreamFactory
) -> None:
    """When attempts run out, the upstream's own 503 and body are handed back."""
    server = await fake_upstream()
    upstream = await make_upstream(_base(server))
    sent = await upstream.send("GET", "/status/503", {}, b"")
    response = sent.response
    assert (response.status, await response.read()) == (503, b"status body")
    response.release()
    assert sent.attempts == 3
    assert _hits(server.app, "/status/503") == 3


@pytest.mark.parametrize("code", [400, 500])
async def test_other_statuses_are_not_retried_by_default(
    fake_upstream: ServerFactory, make_upstream: UpstreamFactory, code: int
) -> None:
    """400 and 500 go back after one attempt under the default conditions."""
    server = await fake_upstream()
    upstream = await make_upstream(_base(server))
    sent = await upstream.send("POST", f"/status/{code}", {}, b"{}")
    sent.response.release()
    assert (sent.response.status, sent.attempts) == (code, 1)
    assert _hits(server.app, f"/status/{code}") == 1


async def test_status_class_condition_retries_500(
    fake_upstream: ServerFactory, make_upstream: UpstreamFactory
) -> None:
    """With "5xx" configured, a 500 is retried like any other server error."""
    server = await fake_upstream()
    retry = RetryConfig(attempts=2, backoff_base=0.001, on=("5xx",))
    upstream = await make_upstream(_base(server), retry=retry)
    sent = await upstream.send("POST", "/sequence/500,200", {}, b"{}")
    sent.response.release()
    assert (sent.response.status, sent.attempts) == (200, 2)
    assert _retries(upstream, "500") == 1


async def test_retry_after_is_honoured(
    fake_upstream: ServerFactory, make_upstream: UpstreamFactory
) -> None:
    """A 503 with Retry-After: 0.3 delays the retry by that long despite a tiny backoff."""
    server = await fake_upstream()
    upstream = await make_upstream(_base(server))
    sent = await upstream.send("GET", "/retry-after/0.3", {}, b"")
    sent.response.release()
    assert (sent.response.status, sent.attempts) == (200, 2)
    first, second = server.app[SEEN]
    assert 0.3 <= second.at - first.at < 1.0


async def test_retry_after_beyond_backoff_max_is_relayed(
    fake_upstream: ServerFactory, make_upstream: UpstreamFactory
) -> None:
    """An upstream asking for 60 s gets no early retry; its 503 goes to the client."""
    server = await fake_upstream()
    upstream = await make_upstream(_base(server))
    sent = await upstream.send("GET", "/retry-after/60", {}, b"")
    sent.response.release()
    assert (sent.response.status, sent.attempts) == (503, 1)
    assert sent.response.headers["Retry-After"] == "60"


async def test_dead_upstream_fails_fast_with_502(
    dead_url: str, make_upstream: UpstreamFactory
) -> None:
    """Connection refused is retried and then a 502 in well under a second, no secrets told."""
    upstream = await make_upstream(dead_url, api_key=API_KEY, retry=RetryConfig())
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(UpstreamUnavailable) as caught:
        await upstream.send("POST", "/chat/completions", {}, b"my secret prompt")
    assert loop.time() - started < 1.0
    assert caught.value.status == 502
    assert "3 attempts" in caught.value.message
    assert str(API_KEY) not in str(caught.value)
    assert "secret prompt" not in str(caught.value)
    assert _retries(upstream, "connect-failure") == 2
    assert upstream.status()["in_flight"] == 0


async def test_connect_failure_not_retried_when_not_configured(
    dead_url: str, make_upstream: UpstreamFactory
) -> None:
    """Without "connect" in the conditions, a refused connection fails after one try."""
    retry = RetryConfig(attempts=3, backoff_base=0.001, on=("502",))
    upstream = await make_upstream(dead_url, retry=retry)
    with pytest.raises(UpstreamUnavailable, match=r"\(1 attempt\)"):
        await upstream.send("GET", "/models", {}, b"")


async def test_round_robin_and_retry_moves_to_the_other_target(
    fake_upstream: ServerFactory, make_upstream: UpstreamFactory, dead_url: str
) -> None:
    """Requests alternate between two targets; one refused on the dead one lands on the live one."""
    one, two = await fake_upstream(), await fake_upstream()
    upstream = await make_upstream(_base(one), _base(two))
    for _ in range(4):
        assert await _get(upstream, "/echo") == 200
    assert (_hits(one.app, "/echo"), _hits(two.app, "/echo")) == (2, 2)

    failover = await make_upstream(dead_url, _base(two, "/v1"))
    sent = await failover.send("GET", "/models", {}, b"")
    sent.response.release()
    assert (sent.response.status, sent.attempts) == (200, 2)
    assert sent.target == _base(two, "/v1")
    assert _retries(failover, "connect-failure") == 1


async def test_a_target_with_a_request_in_flight_is_passed_over(
    fake_upstream: ServerFactory, make_upstream: UpstreamFactory
) -> None:
    """While one target streams a long answer, new requests go to the idle one."""
    one, two = await fake_upstream(), await fake_upstream()
    upstream = await make_upstream(_base(one), _base(two))
    streaming = await upstream.send("GET", "/stall-body", {}, b"")
    busy, idle = (one, two) if _hits(one.app, "/stall-body") else (two, one)
    for _ in range(3):
        assert await _get(upstream, "/echo") == 200
    assert (_hits(busy.app, "/echo"), _hits(idle.app, "/echo")) == (0, 3)
    streaming.response.close()
    assert await _get(upstream, "/echo") == 200
    assert _hits(busy.app, "/echo") == 1


async def test_stall_before_headers_is_upstream_timeout(
    fake_upstream: ServerFactory, make_upstream: UpstreamFactory
) -> None:
    """No response headers within read_timeout is a 504 after about that long."""
    server = await fake_upstream()
    upstream = await make_upstream(_base(server), read_timeout=0.2)
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(UpstreamTimeout) as caught:
        await upstream.send("POST", "/stall-headers", {}, b"{}")
    assert 0.15 <= loop.time() - started < 1.0
    assert caught.value.status == 504
    assert _hits(server.app, "/stall-headers") == 1


async def test_stall_mid_body_raises_on_read(
    fake_upstream: ServerFactory, make_upstream: UpstreamFactory
) -> None:
    """Headers and a first chunk arrive; then an idle gap past read_timeout breaks the read."""
    server = await fake_upstream()
    upstream = await make_upstream(_base(server), read_timeout=0.2)
    sent = await upstream.send("GET", "/stall-body", {}, b"")
    response = sent.response
    assert response.status == 200
    assert await response.content.readany() == b"partial"
    with pytest.raises(TimeoutError):
        await response.content.readany()
    response.release()


async def test_total_timeout_spans_all_attempts(
    fake_upstream: ServerFactory, make_upstream: UpstreamFactory
) -> None:
    """Retried timeouts stop at total_timeout, not after attempts x read_timeout."""
    server = await fake_upstream()
    retry = RetryConfig(attempts=10, backoff_base=0.001, on=("timeout",))
    upstream = await make_upstream(_base(server), read_timeout=0.2, total_timeout=0.5, retry=retry)
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(UpstreamTimeout):
        await upstream.send("GET", "/stall-headers", {}, b"")
    assert 0.45 <= loop.time() - started < 0.9
    assert 2 <= _hits(server.app, "/stall-headers") <= 3
    assert _retries(upstream, "timeout") >= 2


async def test_breaker_opens_refuses_and_recovers_through_half_open(
    fake_upstream: ServerFactory, make_upstream: UpstreamFactory
) -> None:
    """Two 500s open the breaker; calls get 503 untouched; after open_for a good probe closes it."""
    server = await fake_upstream()
    breaker = BreakerConfig(failure_threshold=2, open_for=0.2, half_open_max=1)
    upstream = await make_upstream(_base(server), breaker=breaker)
    gauge = {"upstream": upstream.name, "target": _base(server).rstrip("/")}
    for _ in range(2):
        assert await _get(upstream, "/status/500") == 500
    assert _state(upstream) is BreakerState.OPEN
    assert upstream.status()["healthy"] is False
    assert _sample("gatewayd_circuit_open", **gauge) == 1

    with pytest.raises(UpstreamUnavailable) as caught:
        await upstream.send("GET", "/echo", {}, b"")
    assert caught.value.status == 503
    assert _hits(server.app, "/echo") == 0

    await asyncio.sleep(0.25)
    assert _state(upstream) is BreakerState.HALF_OPEN
    assert _sample("gatewayd_circuit_open", **gauge) == 1
    assert await _get(upstream, "/echo") == 200
    assert _state(upstream) is BreakerState.CLOSED
    assert _sample("gatewayd_circuit_open", **gauge) == 0


async def test_failed_probe_reopens_the_breaker(
    fake_upstream: ServerFactory, make_upstream: UpstreamFactory
) -> None:
    """A 502 from the half-open probe opens the breaker again for another open_for."""
    server = await fake_upstream()
    breaker = BreakerConfig(failure_threshold=1, open_for=0.1)
    retry = RetryConfig(attempts=1)
    upstream = await make_upstream(_base(server), breaker=breaker, retry=retry)
    assert await _get(upstream, "/status/502") == 502
    await asyncio.sleep(0.15)
    assert await _get(upstream, "/status/502") == 502
    assert _state(upstream) is BreakerState.OPEN


async def test_cancelled_probe_does_not_wedge_the_breaker(
    fake_upstream: ServerFactory, make_upstream: UpstreamFactory
) -> None:
    """A half-open probe cancelled mid-flight reopens the breaker instead of holding its slot."""
    server = await fake_upstream()
    breaker = BreakerConfig(failure_threshold=1, open_for=0.1, half_open_max=1)
    upstream = await make_upstream(_base(server), breaker=breaker)
    assert await _get(upstream, "/status/500") == 500
    await asyncio.sleep(0.15)
    server.app[ARRIVED].clear()
    probe = asyncio.create_task(upstream.send("GET", "/stall-headers", {}, b""))
    await asyncio.wait_for(server.app[ARRIVED].wait(), timeout=1.0)
    probe.cancel()
    with pytest.raises(asyncio.CancelledError):
        await probe
    assert _state(upstream) is BreakerState.OPEN
    assert upstream.status()["in_flight"] == 0
    await asyncio.sleep(0.15)
    assert await _get(upstream, "/echo") == 200


async def test_retry_budget_limits_retries_under_a_burst_of_failures(
    fake_upstream: ServerFactory, make_upstream: UpstreamFactory
) -> None:
    """Twenty failing requests make four retries (floor 3, then 20% of 16), not forty."""
    server = await fake_upstream()
    retry = RetryConfig(attempts=3, backoff_base=0.001, budget_ratio=0.2)
    # The breaker would stop the burst first; this test is about the budget alone.
    breaker = BreakerConfig(failure_threshold=1000)
    upstream = await make_upstream(_base(server), retry=retry, breaker=breaker)
    for _ in range(20):
        assert await _get(upstream, "/status/502") == 502
    assert _hits(server.app, "/status/502") == 24
    assert _retries(upstream, "502") == 4
    assert upstream.status()["window_requests"] == 20
    assert upstream.status()["window_retries"] == 4


async def test_status_reports_breaker_targets_and_in_flight(
    fake_upstream: ServerFactory, make_upstream: UpstreamFactory
) -> None:
    """status() counts a response as in flight until released, and never shows the key."""
    server = await fake_upstream()
    upstream = await make_upstream(
        _base(server), "https://user:pw@other.example/v1", api_key=API_KEY
    )
    assert upstream.status()["latency_ms"] is None
    sent = await upstream.send("GET", "/stall-body", {}, b"")
    status = upstream.status()
    latency = status.pop("latency_ms")
    assert isinstance(latency, float)
    assert latency > 0
    assert status == {
        "healthy": True,
        "breaker": "closed",
        "retry_after": 0.0,
        "targets": [
            {"target": _base(server).rstrip("/"), "breaker": "closed", "retry_after": 0.0},
            {"target": "https://other.example/v1", "breaker": "closed", "retry_after": 0.0},
        ],
        "in_flight": 1,
        "window_requests": 1,
        "window_retries": 0,
    }
    sent.response.close()
    assert upstream.status()["in_flight"] == 0
    assert str(API_KEY) not in repr(upstream.status())
    assert "pw" not in repr(upstream.status())


async def test_send_before_start_is_a_programming_error() -> None:
    """An Upstream whose session was never started refuses to send."""
    upstream = Upstream(UpstreamConfig(name="unstarted", urls=("http://127.0.0.1:1",)))
    with pytest.raises(RuntimeError, match="not started"):
        await upstream.send("GET", "/", {}, b"")


async def test_malformed_response_is_502_and_not_retried(make_upstream: UpstreamFactory) -> None:
    """A peer that answers with garbage instead of HTTP is a 502 after one attempt."""
    connections = 0

    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"this is not http\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(garbage, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        upstream = await make_upstream(f"http://127.0.0.1:{port}")
        with pytest.raises(UpstreamUnavailable, match="invalid response") as caught:
            await upstream.send("GET", "/models", {}, b"")
        assert caught.value.status == 502
        assert connections == 1
    finally:
        server.close()
        await server.wait_closed()
