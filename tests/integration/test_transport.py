"""The pooled transport against raw loopback servers that answer byte for byte
what each test scripts: body framings, 1xx, bodiless answers, trailers,
malformed heads, timeouts, cancellation, back-pressure, TLS and pool limits.
"""

from __future__ import annotations

import asyncio
import os
import socket
import ssl
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gatewayd.upstream.outcome import Progress
from gatewayd.upstream.transport import InvalidResponse, PooledTransport, Reply, StaleConnection

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


class RawServer:
    """A loopback server running `handler` per connection, counting connections
    and how many are open at once."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections = 0
        self.open = 0
        self.most_open = 0
        self.closed = asyncio.Event()
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []

    async def start(self, tls: ssl.SSLContext | None = None) -> RawServer:
        """Listen on a free loopback port."""
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=tls)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def url(self, scheme: str = "http") -> str:
        """The server's base URL."""
        return f"{scheme}://127.0.0.1:{self.port}"

    async def stop(self) -> None:
        """Close every connection and the listener."""
        for writer in self._writers:
            writer.close()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.open += 1
        self.most_open = max(self.most_open, self.open)
        self._writers.append(writer)
        try:
            await self.handler(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self.open -= 1
            self.closed.set()
            writer.close()


async def _request(reader: asyncio.StreamReader) -> bytes:
    """One request head (the tests send no bodies); empty at EOF."""
    try:
        return await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return b""


def answering(*answers: bytes, then_close: bool = False) -> Handler:
    """A handler giving the n-th request on a connection the n-th answer (the
    last repeats) until the client hangs up, or closing after the last."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        served = 0
        while await _request(reader):
            writer.write(answers[min(served, len(answers) - 1)])
            await writer.drain()
            served += 1
            if then_close and served == len(answers):
                return

    return handle


Serve = Callable[..., Awaitable[RawServer]]


@pytest.fixture
async def serve() -> AsyncIterator[Serve]:
    """Starts RawServers and stops them after the test."""
    started: list[RawServer] = []

    async def start(handler: Handler, tls: ssl.SSLContext | None = None) -> RawServer:
        server = await RawServer(handler).start(tls)
        started.append(server)
        return server

    yield start
    for server in started:
        await server.stop()


Make = Callable[..., PooledTransport]


@pytest.fixture
async def make() -> AsyncIterator[Make]:
    """Builds transports (keyword overrides) and closes them after the test."""
    made: list[PooledTransport] = []

    def build(**overrides: Any) -> PooledTransport:
        params: dict[str, Any] = {"limit": 10, "read_timeout": 5.0, "connect_timeout": 5.0}
        params.update(overrides)
        transport = PooledTransport(**params)
        made.append(transport)
        return transport

    yield build
    for transport in made:
        await transport.close()


async def _send(
    transport: PooledTransport,
    url: str,
    method: str = "GET",
    within: float = 5.0,
    progress: Progress | None = None,
) -> Reply:
    """One request to `url`, its deadline `within` seconds from now."""
    deadline = asyncio.get_running_loop().time() + within
    return await transport.send(
        transport.origin(url),
        method,
        "/",
        [],
        b"",
        deadline=deadline,
        progress=progress or Progress(),
    )


async def _body(transport: PooledTransport, url: str, method: str = "GET") -> tuple[int, bytes]:
    """Status and whole body of one request."""
    reply = await _send(transport, url, method)
    try:
        return reply.status, await reply.read()
    finally:
        reply.release()


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\nhello world",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
    ],
    ids=["content-length", "chunked"],
)
async def test_framed_bodies_arrive_whole_and_the_connection_is_reused(
    serve: Serve, make: Make, answer: bytes
) -> None:
    """Content-Length and chunked bodies are read whole; the next request reuses the connection."""
    server = await serve(answering(answer))
    transport = make()
    for _ in range(3):
        assert await _body(transport, server.url()) == (200, b"hello world")
    assert server.connections == 1


async def test_close_delimited_body_is_read_to_eof_and_not_pooled(serve: Serve, make: Make) -> None:
    """A body without length or chunking ends at the server's close; the next request reconnects."""
    server = await serve(answering(b"HTTP/1.1 200 OK\r\n\r\nuntil the end", then_close=True))
    transport = make()
    assert await _body(transport, server.url()) == (200, b"until the end")
    assert await _body(transport, server.url()) == (200, b"until the end")
    assert server.connections == 2


async def test_an_answer_split_byte_by_byte_parses_the_same(serve: Serve, make: Make) -> None:
    """Status line, headers and a chunked body written one byte at a time arrive intact."""
    answer = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-A: b\r\n\r\n3\r\nabc\r\n0\r\n\r\n"

    async def trickle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await _request(reader):
            for byte in answer:
                writer.write(bytes([byte]))
                await writer.drain()
                await asyncio.sleep(0.001)

    server = await serve(trickle)
    transport = make()
    reply = await _send(transport, server.url())
    assert (reply.status, reply.headers["X-A"], await reply.read()) == (200, "b", b"abc")
    reply.release()
    assert await _body(transport, server.url()) == (200, b"abc")
    assert server.connections == 1


async def test_informational_answers_are_skipped(serve: Serve, make: Make) -> None:
    """100 Continue and 103 Early Hints before the final answer are passed over."""
    early = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n"
    server = await serve(answering(early + OK))
    transport = make()
    reply = await _send(transport, server.url())
    assert (reply.status, "Link" in reply.headers, await reply.read()) == (200, False, b"ok")
    reply.release()


async def test_a_protocol_switch_is_refused(serve: Serve, make: Make) -> None:
    """101 Switching Protocols was never asked for: a malformed answer."""
    server = await serve(answering(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\n\r\n"))
    with pytest.raises(InvalidResponse, match="switched protocols"):
        await _send(make(), server.url())


@pytest.mark.parametrize(
    ("method", "answer"),
    [
        ("HEAD", b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n"),
        ("GET", b"HTTP/1.1 204 No Content\r\n\r\n"),
        ("GET", b"HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\n"),
    ],
    ids=["head", "204", "304"],
)
async def test_bodiless_answers_end_at_their_headers(
    serve: Serve, make: Make, method: str, answer: bytes
) -> None:
    """HEAD, 204 and 304 have no body whatever their headers say; the connection serves on."""
    server = await serve(answering(answer, OK))
    transport = make()
    status, body = await _body(transport, server.url(), method)
    assert (status, body) == (int(answer[9:12]), b"")
    assert await _body(transport, server.url()) == (200, b"ok")
    assert server.connections == 1


async def test_trailers_end_the_body_and_are_not_headers(serve: Serve, make: Make) -> None:
    """Trailer fields after the last chunk are consumed, not mixed into the headers or body."""
    answer = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Checksum\r\n\r\n"
        b"2\r\nok\r\n0\r\nX-Checksum: abc\r\n\r\n"
    )
    server = await serve(answering(answer, OK))
    transport = make()
    reply = await _send(transport, server.url())
    assert await reply.read() == b"ok"
    assert "X-Checksum" not in reply.headers
    reply.release()
    assert await _body(transport, server.url()) == (200, b"ok")
    assert server.connections == 1


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 200 " + b"x" * 9000 + b"\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nX-Big: " + b"v" * 9000 + b"\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\n" + b"X-Many: 1\r\n" * 200 + b"Content-Length: 2\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nno colon here\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nX-Bad: a\x00b\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.1 2OO OK\r\nContent-Length: 2\r\n\r\nok",
        b"SMTP ready\r\n\r\n",
    ],
    ids=["long-status", "long-header", "many-headers", "no-colon", "nul", "status", "not-http"],
)
async def test_malformed_or_oversize_heads_are_refused(
    serve: Serve, make: Make, answer: bytes
) -> None:
    """A bad or oversize status line or header is an InvalidResponse; the connection is closed."""
    server = await serve(answering(answer))
    with pytest.raises(InvalidResponse):
        await _send(make(), server.url())
    await asyncio.wait_for(server.closed.wait(), 2.0)
    assert server.open == 0


async def test_pooled_connection_closed_while_idle_is_stale_before_writing(
    serve: Serve, make: Make
) -> None:
    """A pooled socket the server shut while idle is refused before any byte is written."""
    writers: list[asyncio.StreamWriter] = []

    async def remember(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        await answering(OK)(reader, writer)

    server = await serve(remember)
    transport = make()
    assert await _body(transport, server.url()) == (200, b"ok")
    # Idle long enough to be checked before reuse, as after a keep-alive timeout.
    await asyncio.sleep(0.15)
    fd = writers[0].get_extra_info("socket").fileno()
    with socket.socket(fileno=os.dup(fd)) as dup:
        dup.shutdown(socket.SHUT_RDWR)
    # Blocking on purpose: the FIN reaches the client while its loop does not run.
    time.sleep(0.01)  # noqa: ASYNC251
    progress = Progress()
    with pytest.raises(StaleConnection):
        await _send(transport, server.url(), progress=progress)
    assert (progress.connected, progress.written) == (True, False)
    assert await _body(transport, server.url()) == (200, b"ok")


async def test_no_headers_within_read_timeout_is_a_socket_timeout(serve: Serve, make: Make) -> None:
    """A request written and never answered fails after read_timeout, as sent."""

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _request(reader)
        await reader.read()

    server = await serve(silent)
    progress = Progress()
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(aiohttp.SocketTimeoutError):
        await _send(make(read_timeout=0.2), server.url(), progress=progress)
    assert 0.15 <= loop.time() - started < 1.0
    assert progress.written


async def test_deadline_before_read_timeout_ends_the_wait_for_headers(
    serve: Serve, make: Make
) -> None:
    """A deadline nearer than read_timeout ends the wait for headers at the deadline."""

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _request(reader)
        await reader.read()

    server = await serve(silent)
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(aiohttp.SocketTimeoutError):
        await _send(make(read_timeout=30.0), server.url(), within=0.3)
    assert 0.25 <= loop.time() - started < 1.0
    await asyncio.wait_for(server.closed.wait(), 2.0)


async def test_deadline_cuts_a_body_that_keeps_trickling(serve: Serve, make: Make) -> None:
    """Bytes every 50 ms keep read_timeout at bay; the request's deadline still ends the read."""

    async def endless(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        while True:
            writer.write(b"1\r\nx\r\n")
            await writer.drain()
            await asyncio.sleep(0.05)

    server = await serve(endless)
    loop = asyncio.get_running_loop()
    started = loop.time()
    reply = await _send(make(read_timeout=0.2), server.url(), within=0.5)

    async def drain() -> None:
        while await reply.content.readany():
            pass

    with pytest.raises(TimeoutError):
        await drain()
    assert 0.45 <= loop.time() - started < 1.0
    reply.close()
    await asyncio.wait_for(server.closed.wait(), 2.0)


async def test_no_pool_slot_before_the_deadline_is_a_connect_timeout(
    serve: Serve, make: Make
) -> None:
    """With the only connection busy, a second request times out as never connected."""
    release = asyncio.Event()

    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _request(reader)
        await release.wait()
        writer.write(OK)
        await writer.drain()

    server = await serve(hold)
    transport = make(limit=1)
    first = asyncio.create_task(_body(transport, server.url()))
    await asyncio.sleep(0.05)
    progress = Progress()
    with pytest.raises(aiohttp.ConnectionTimeoutError):
        await _send(transport, server.url(), within=0.2, progress=progress)
    assert not progress.connected
    release.set()
    assert await first == (200, b"ok")


async def test_a_connect_that_never_completes_is_a_connect_timeout(make: Make) -> None:
    """A listener whose backlog is full drops the SYN: connect_timeout ends the wait."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        fillers = []
        for _ in range(4):
            filler = socket.socket()
            filler.setblocking(False)
            filler.connect_ex(("127.0.0.1", port))
            fillers.append(filler)
        try:
            with pytest.raises(aiohttp.ConnectionTimeoutError):
                await _send(make(connect_timeout=0.2), f"http://127.0.0.1:{port}")
        finally:
            for filler in fillers:
                filler.close()


async def test_cancelled_while_waiting_for_headers_closes_the_connection(
    serve: Serve, make: Make
) -> None:
    """A client gone before the answer closes the upstream connection; it is never pooled."""
    arrived = asyncio.Event()

    async def slow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _request(reader)
        arrived.set()
        assert await reader.read() == b""

    server = await serve(slow)
    transport = make()
    task = asyncio.create_task(_send(transport, server.url()))
    await asyncio.wait_for(arrived.wait(), 2.0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.wait_for(server.closed.wait(), 2.0)
    assert server.open == 0


async def test_a_body_dropped_half_read_closes_the_connection(serve: Serve, make: Make) -> None:
    """Releasing an answer before its end closes the connection; the next request reconnects."""
    answer = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n"
    server = await serve(answering(answer))
    transport = make()
    reply = await _send(transport, server.url())
    assert await reply.content.readany() == b"ok"
    reply.release()
    await asyncio.wait_for(server.closed.wait(), 2.0)
    reply = await _send(transport, server.url())
    reply.close()
    assert server.connections == 2


async def test_a_slow_reader_pauses_a_fast_stream(serve: Serve, make: Make) -> None:
    """An SSE stream read slowly stops the upstream's writes at a bounded amount of memory."""
    written = 0
    event = b"data: " + b"x" * 1000 + b"\n\n"

    async def firehose(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal written
        await _request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\r\n")
        while True:
            writer.write(event)
            await writer.drain()
            written += len(event)

    server = await serve(firehose)
    reply = await _send(make(), server.url())
    assert await reply.content.readany()
    await asyncio.sleep(0.3)
    stalled_at = written
    await asyncio.sleep(0.3)
    assert written == stalled_at
    # Kernel socket buffers on both sides plus the reader's high-water mark.
    assert stalled_at < 32 * 1024 * 1024
    assert reply.content.total_bytes < 1024 * 1024
    reply.close()


async def test_pool_limit_per_target_caps_open_connections(serve: Serve, make: Make) -> None:
    """Five concurrent requests to one target with limit_per_host=2 use two connections."""
    release = asyncio.Event()

    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await _request(reader):
            await release.wait()
            writer.write(OK)
            await writer.drain()

    server = await serve(hold)
    transport = make(limit=10, limit_per_host=2)
    tasks = [asyncio.create_task(_body(transport, server.url())) for _ in range(5)]
    await asyncio.sleep(0.2)
    assert server.open == 2
    release.set()
    assert await asyncio.gather(*tasks) == [(200, b"ok")] * 5
    assert server.most_open == 2


def _openssl(*argv: str) -> None:
    subprocess.run(["openssl", *argv], check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def test_ca(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """A throwaway CA and a server certificate for IP 127.0.0.1 it signed: (ca, cert, key)."""
    where = tmp_path_factory.mktemp("tls")
    ca, ca_key = where / "ca.pem", where / "ca.key"
    cert, key, csr = where / "server.pem", where / "server.key", where / "server.csr"
    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes")
    _openssl(
        "req", "-x509", *ec, "-days", "2", "-subj", "/CN=gatewayd test CA",
        "-keyout", str(ca_key), "-out", str(ca),
    )  # fmt: skip
    _openssl("req", "-new", *ec, "-subj", "/CN=127.0.0.1", "-keyout", str(key), "-out", str(csr))
    ext = where / "ext.cnf"
    ext.write_text("subjectAltName=IP:127.0.0.1\n")
    _openssl(
        "x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key),
        "-CAcreateserial", "-days", "2", "-extfile", str(ext), "-out", str(cert),
    )  # fmt: skip
    return ca, cert, key


async def test_https_to_a_server_signed_by_a_trusted_ca(
    serve: Serve, make: Make, test_ca: tuple[Path, Path, Path]
) -> None:
    """TLS to a server certified by a trusted test CA works and pools; untrusted, it fails."""
    ca, cert, key = test_ca
    server_side = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_side.load_cert_chain(cert, key)
    server = await serve(answering(OK), server_side)
    trusting = make(ssl_context=ssl.create_default_context(cafile=str(ca)))
    for _ in range(3):
        assert await _body(trusting, server.url("https")) == (200, b"ok")
    assert server.connections == 1
    with pytest.raises(aiohttp.ClientConnectorCertificateError):
        await _send(make(), server.url("https"))
