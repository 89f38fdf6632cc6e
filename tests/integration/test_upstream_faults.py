"""How often the upstream client tries, against a raw HTTP/1.1 server that
injects faults: drop after reading the whole request, stall, break off a
stream, close an idle pooled connection, scripted statuses with retry hints;
and per-target breakers.

Every case counts both sides: the attempts the client made and the requests
the upstream actually read, which is what a paid API bills.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
import pytest
from multidict import CIMultiDict, CIMultiDictProxy

from gatewayd.breaker import BreakerState
from gatewayd.config.schema import BreakerConfig, RetryConfig, RouteConfig, Secret
from gatewayd.errors import UpstreamError
from gatewayd.observability.metrics import REGISTRY
from gatewayd.upstream.client import Upstream
from gatewayd.upstream.fallback import send_routed

# The default conditions with waits short enough for a test (make_upstream's default).
FAST = RetryConfig(attempts=3, backoff_base=0.001)
_REASONS = {200: "OK", 429: "Too Many Requests", 500: "Error", 502: "Bad Gateway", 503: "Busy"}


class FaultyUpstream:
    """A loopback HTTP/1.1 server whose n-th request gets the n-th action (the
    last one repeats): "drop" reads the whole request and closes without an
    answer, "stall" never answers, "break" starts an SSE stream and closes
    after its first event, "NNN[ Header: value]" answers that status."""

    def __init__(self, *actions: str) -> None:
        self.actions = actions or ("200",)
        self.requests = 0
        self.heads: list[bytes] = []
        self.connections = 0
        self.url = ""
        self.release = asyncio.Event()
        self._writers: list[asyncio.StreamWriter] = []
        self._server: asyncio.Server | None = None

    async def start(self) -> FaultyUpstream:
        """Listen on a free loopback port."""
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"
        return self

    async def stop(self) -> None:
        """Release stalled handlers and close the listener and every connection."""
        self.release.set()
        for writer in self._writers:
            writer.close()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def shut_idle_connections(self) -> None:
        """After the connections sat idle a while (as for an upstream's keep-alive
        timeout), send FIN on every one without letting the loop run, so the
        client's pool still holds them as live when it reuses one."""
        await asyncio.sleep(0.15)
        for writer in self._writers:
            if not writer.is_closing():
                fd = writer.get_extra_info("socket").fileno()
                with socket.socket(fileno=os.dup(fd)) as dup:
                    dup.shutdown(socket.SHUT_RDWR)
        # Blocking on purpose: the FIN lands in the client's socket while its
        # event loop, which would notice it, does not run.
        time.sleep(0.01)  # noqa: ASYNC251

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.append(writer)
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                await reader.readexactly(_content_length(head))
                self.heads.append(head.lower())
                action = self.actions[min(self.requests, len(self.actions) - 1)]
                self.requests += 1
                if action == "drop":
                    return
                if action == "stall":
                    await self.release.wait()
                    return
                if action == "break":
                    writer.write(_BROKEN_STREAM)
                    await writer.drain()
                    return
                writer.write(_response(action))
                await writer.drain()
        finally:
            writer.close()


# Chunked, so closing before the last chunk is a broken body, not its end.
_BROKEN_STREAM = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
    b'10\r\ndata: {"a": 1}\n\n\r\n'
)


def _content_length(head: bytes) -> int:
    """The Content-Length of a request head, 0 without one."""
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    return 0


def _response(action: str) -> bytes:
    """A keep-alive response for an action such as "429 Retry-After: 1"."""
    code, _, header = action.partition(" ")
    extra = f"{header}\r\n" if header else ""
    reason = _REASONS.get(int(code), "Status")
    return f"HTTP/1.1 {code} {reason}\r\nContent-Length: 2\r\n{extra}\r\nok".encode()


Faulty = Callable[..., Awaitable[FaultyUpstream]]
Make = Callable[..., Awaitable[Upstream]]


@pytest.fixture
async def faulty() -> AsyncIterator[Faulty]:
    """Starts FaultyUpstreams and stops them after the test."""
    started: list[FaultyUpstream] = []

    async def start(*actions: str) -> FaultyUpstream:
        server = await FaultyUpstream(*actions).start()
        started.append(server)
        return server

    yield start
    for server in started:
        await server.stop()


async def _outcome(upstream: Upstream) -> tuple[int, int]:
    """(status the client gets, attempts made) for one POST."""
    try:
        sent = await upstream.send("POST", "/v1/chat/completions", {}, b'{"model": "m"}')
    except UpstreamError as exc:
        return exc.status, exc.attempts
    sent.response.release()
    return sent.response.status, sent.attempts


@pytest.mark.parametrize(
    ("actions", "on", "attempts", "requests", "status"),
    [
        # Read the whole POST, then closed: the model may be running. Never again by default.
        (("drop",), None, 1, 1, 502),
        (("drop",), ("reset",), 3, 3, 502),
        (("drop", "200"), ("reset",), 2, 2, 200),
        # No answer in time: the same, as a timeout.
        (("stall",), None, 1, 1, 504),
        (("stall",), ("timeout",), 3, 3, 504),
        # Statuses the upstream refused the work with.
        (("503", "200"), None, 2, 2, 200),
        (("502", "504", "200"), None, 3, 3, 200),
        (("429 Retry-After: 0.01", "200"), None, 2, 2, 200),
        (("429 retry-after-ms: 5", "200"), None, 2, 2, 200),
        (("500",), None, 1, 1, 500),
        (("500 x-should-retry: true", "200"), None, 2, 2, 200),
        (("503 x-should-retry: false",), None, 1, 1, 503),
        (("429 Retry-After: 60",), None, 1, 1, 429),
    ],
)
async def test_attempt_matrix(
    faulty: Faulty,
    make_upstream: Make,
    actions: tuple[str, ...],
    on: tuple[str, ...] | None,
    attempts: int,
    requests: int,
    status: int,
) -> None:
    """Each fault under each config gets the exact attempts, upstream requests and status."""
    server = await faulty(*actions)
    retry = FAST if on is None else dataclasses.replace(FAST, on=on)
    upstream = await make_upstream(server.url, retry=retry, read_timeout=0.05)
    assert await _outcome(upstream) == (status, attempts)
    assert server.requests == requests


async def test_drop_after_sending_says_the_request_may_have_been_processed(
    faulty: Faulty, make_upstream: Make
) -> None:
    """The 502 for a connection closed after the POST was read warns that it may have run."""
    server = await faulty("drop")
    upstream = await make_upstream(server.url)
    with pytest.raises(UpstreamError) as caught:
        await upstream.send("POST", "/v1/chat/completions", {}, b"{}")
    assert (caught.value.status, caught.value.code) == (502, "upstream_unavailable")
    assert "may have been processed" in caught.value.message


async def test_refused_connection_is_retried_and_never_reaches_anyone(
    make_upstream: Make, unused_tcp_port: int
) -> None:
    """Connection refused three times is three attempts and a 502."""
    upstream = await make_upstream(f"http://127.0.0.1:{unused_tcp_port}")
    assert await _outcome(upstream) == (502, 3)


@pytest.mark.parametrize(
    ("on", "status", "attempts", "requests"),
    [(None, 200, 2, 1), (("connect-failure",), 502, 1, 0)],
)
async def test_pooled_connection_closed_before_reuse(
    faulty: Faulty,
    make_upstream: Make,
    on: tuple[str, ...] | None,
    status: int,
    attempts: int,
    requests: int,
) -> None:
    """An idle connection closed by the upstream is found dead before writing: retried only
    under reset-before-request, and the upstream reads the request once at most."""
    server = await faulty("200")
    retry = FAST if on is None else dataclasses.replace(FAST, on=on)
    upstream = await make_upstream(server.url, retry=retry)
    assert await _outcome(upstream) == (200, 1)
    await server.shut_idle_connections()
    assert await _outcome(upstream) == (status, attempts)
    assert server.requests == 1 + requests


async def test_429_on_one_target_moves_to_the_next_at_once(
    faulty: Faulty, make_upstream: Make
) -> None:
    """A 429 asking for a minute on one target is answered by the other without waiting."""
    busy, idle = await faulty("429 Retry-After: 60"), await faulty("200")
    upstream = await make_upstream(busy.url, idle.url)
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert await _outcome(upstream) == (200, 2)
    assert loop.time() - started < 0.5
    assert (busy.requests, idle.requests) == (1, 1)


async def test_one_dead_target_of_three_is_ejected_alone(
    faulty: Faulty, make_upstream: Make, unused_tcp_port: int
) -> None:
    """With one target refusing, clients see no error, and only that target's breaker opens."""
    one, two = await faulty("200"), await faulty("200")
    dead = f"http://127.0.0.1:{unused_tcp_port}"
    breaker = BreakerConfig(failure_threshold=2, open_for=30.0)
    upstream = await make_upstream(dead, one.url, two.url, breaker=breaker)
    for _ in range(9):
        assert (await _outcome(upstream))[0] == 200
    assert [b.state for b in upstream.breakers] == [
        BreakerState.OPEN,
        BreakerState.CLOSED,
        BreakerState.CLOSED,
    ]
    assert upstream.status()["breaker"] == "degraded"
    assert upstream.status()["healthy"] is True
    gauge = [
        REGISTRY.get_sample_value("gatewayd_circuit_open", {"upstream": upstream.name, "target": t})
        for t in (dead, one.url, two.url)
    ]
    assert gauge == [1.0, 0.0, 0.0]


async def test_every_target_open_is_503_with_retry_after(
    make_upstream: Make, unused_tcp_port: int
) -> None:
    """Once every target's breaker is open, the answer is 503 with the seconds until a probe."""
    breaker = BreakerConfig(failure_threshold=1, open_for=30.0)
    upstream = await make_upstream(
        f"http://127.0.0.1:{unused_tcp_port}", retry=RetryConfig(attempts=1), breaker=breaker
    )
    assert await _outcome(upstream) == (502, 1)
    with pytest.raises(UpstreamError) as caught:
        await upstream.send("POST", "/v1/chat/completions", {}, b"{}")
    assert caught.value.status == 503
    assert caught.value.headers == {"Retry-After": "30"}
    assert upstream.status()["breaker"] == "open"


async def _routed(primary: Upstream, fallback: Upstream) -> tuple[int, int, str]:
    """(status, attempts, answering upstream or "" for an error) for one POST on a
    route whose fallback is `fallback`."""
    route = RouteConfig(name="r", prefix="/v1", upstream=primary.name, fallback=fallback.name)
    upstreams = {primary.name: primary, fallback.name: fallback}
    client_headers = CIMultiDictProxy(CIMultiDict({"Content-Type": "application/json"}))
    try:
        sent = await send_routed(
            upstreams, route, "POST", "/chat", client_headers, "req-1", b"{}", identity=False
        )
    except UpstreamError as exc:
        return exc.status, exc.attempts, ""
    sent.response.release()
    return sent.response.status, sent.attempts, sent.upstream


@pytest.mark.parametrize(
    ("primary_actions", "status", "attempts", "answered"),
    [
        (("503",), 200, 4, "fallback"),
        (("drop",), 502, 1, ""),
        (("503 x-should-retry: false",), 503, 1, "primary"),
        (("400",), 400, 1, "primary"),
    ],
)
async def test_fallback_answers_only_after_a_retryable_end(
    faulty: Faulty,
    make_upstream: Make,
    primary_actions: tuple[str, ...],
    status: int,
    attempts: int,
    answered: str,
) -> None:
    """A route's fallback is asked after retries of a refused status ran out, never after a drop."""
    main, spare = await faulty(*primary_actions), await faulty("200")
    primary = await make_upstream(main.url)
    fallback = await make_upstream(spare.url)
    names = {"primary": primary.name, "fallback": fallback.name, "": ""}
    assert await _routed(primary, fallback) == (status, attempts, names[answered])
    assert spare.requests == (1 if answered == "fallback" else 0)


async def test_fallback_takes_over_when_every_target_is_ejected(
    faulty: Faulty, make_upstream: Make, unused_tcp_port: int
) -> None:
    """With the route's upstream refused, then ejected, the fallback answers with its headers."""
    spare = await faulty("200")
    primary = await make_upstream(
        f"http://127.0.0.1:{unused_tcp_port}",
        breaker=BreakerConfig(failure_threshold=3, open_for=30.0),
        headers=(("api-key", Secret("primary-secret")),),
    )
    fallback = await make_upstream(spare.url, headers=(("api-key", Secret("spare-key")),))
    assert await _routed(primary, fallback) == (200, 4, fallback.name)
    assert primary.status()["breaker"] == "open"
    assert await _routed(primary, fallback) == (200, 1, fallback.name)
    assert all(b"api-key: spare-key" in head for head in spare.heads)
    assert not any(b"primary-secret" in head for head in spare.heads)


async def test_a_stream_broken_off_is_one_attempt_and_a_read_error(
    faulty: Faulty, make_upstream: Make
) -> None:
    """A stream that breaks off after its first event is never retried (the model ran):
    the caller gets the event, then a payload error; the breaker hears a success."""
    server = await faulty("break")
    upstream = await make_upstream(server.url, retry=dataclasses.replace(FAST, on=("5xx", "reset")))
    sent = await upstream.send("POST", "/v1/chat/completions", {}, b'{"stream": true}')
    assert (sent.response.status, sent.attempts) == (200, 1)
    assert await sent.response.content.readany() == b'data: {"a": 1}\n\n'
    with pytest.raises(aiohttp.ClientPayloadError):
        await sent.response.content.readany()
    sent.response.release()
    assert server.requests == 1
    assert upstream.status()["in_flight"] == 0
    assert upstream.breakers[0].state is BreakerState.CLOSED
