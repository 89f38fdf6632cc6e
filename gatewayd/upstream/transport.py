"""The wire to an upstream: a request out, its status and headers back, then
its body as a stream. One seam (`Transport`), one production implementation.

    PooledTransport.send(origin, method, path_qs, headers, body, deadline, progress)
        connection   aiohttp's TCPConnector: keep-alive pool and limits per
                     target, DNS cache with its TTL, TLS            -> Progress.connect()
        stale check  a pooled socket that is readable while idle is closed and
                     refused (reset-before-request)
        write        request line, headers and body in one call       -> Progress.written
        read         aiohttp's ResponseHandler and its C response parser;
                     1xx skipped, HEAD/204/304 bodiless, close-delimited allowed
    -> Reply: status, headers, content (aiohttp's StreamReader, paused past
       its high-water mark, so a slow reader pauses the upstream socket)

A reply read to its end puts the connection back in the pool by itself; one
released early, closed, cancelled or broken closes it, so a half-read answer
is never handed to the next request. ClientSession would do the same work
with a ClientRequest, timers, traces and a writer task per call; this keeps
one ClientRequest per target, used only as the connector's key and template.

Failures are aiohttp's exceptions, so upstream/outcome.py's FAILURES reads
them: ConnectionTimeoutError (no connection or pool slot in time),
ClientConnectorError, ServerDisconnectedError and ClientOSError (reset),
SocketTimeoutError (read_timeout, or the deadline), InvalidResponse below.
"""

from __future__ import annotations

import asyncio
import functools
import re
import select
import ssl
import weakref
from collections.abc import Callable, Iterable
from typing import Final, Protocol

import aiohttp
from aiohttp import ClientRequest, ClientTimeout
from aiohttp.client_proto import ResponseHandler
from aiohttp.connector import Connection
from aiohttp.helpers import set_exception
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.streams import StreamReader
from multidict import CIMultiDictProxy
from yarl import URL

from gatewayd.upstream.outcome import Progress

# aiohttp's StreamReader limit: the body buffer pauses the socket past twice this.
_READ_BUFSIZE: Final = 2**16
# aiohttp's client defaults: a longer status line or header, or more headers,
# is a malformed answer, refused.
_MAX_LINE: Final = 8190
_MAX_FIELD: Final = 8190
_MAX_HEADERS: Final = 128
# A pooled connection idle this long is checked for a close by the upstream
# (one syscall) before reuse. Upstreams close idle connections after seconds
# of quiet, so one reused sooner is not at risk, and a busy pool (where a
# syscall per request is a measurable share) pays nothing for the check.
_STALE_AFTER: Final = 0.1
# Methods that send a Content-Length even with no body (RFC 9110 9.3.3).
_BODY_METHODS: Final = frozenset({"POST", "PUT", "PATCH"})
# Controls and spaces cannot be in a request target; aiohttp's server never
# lets them through, a rewritten path or config still might.
_UNSAFE_TARGET: Final = re.compile(r"[\x00-\x20\x7f]")


class InvalidResponse(aiohttp.ClientResponseError):
    """The upstream's answer is not HTTP/1.1 this client accepts (malformed or
    oversize status line or headers, a protocol switch): refused, never relayed."""

    def __init__(self, message: str) -> None:
        # No request info: it would carry the URL, which may carry credentials.
        super().__init__(None, (), message=message)  # type: ignore[arg-type]

    def __str__(self) -> str:
        return self.message


class StaleConnection(aiohttp.ServerDisconnectedError):
    """A pooled connection the upstream had closed, found before anything was written."""


class Origin:
    """One target's scheme, host and port (a ClientRequest the connector keys
    its pool by and connects from), its Host header and base path."""

    __slots__ = ("host", "prefix", "template")

    def __init__(self, base: URL, template: ClientRequest) -> None:
        self.template = template
        self.host = base.host_port_subcomponent or ""
        self.prefix = base.raw_path.rstrip("/")

    def __repr__(self) -> str:
        return f"Origin({self.host!r})"


class Reply:
    """An answer whose status and headers arrived; the body is `content`.

    release() (or reading to the end) returns the connection to the pool if
    the body was read whole, else closes it; close() always closes it.
    """

    __slots__ = ("_conn", "_deadline", "_done", "content", "headers", "reason", "status")

    def __init__(
        self,
        status: int,
        reason: str,
        headers: CIMultiDictProxy[str],
        content: StreamReader,
        conn: Connection | None = None,
        deadline: asyncio.TimerHandle | None = None,
    ) -> None:
        self.status = status
        self.reason = reason
        self.headers = headers
        self.content = content
        self._conn = conn
        self._deadline = deadline
        self._done: list[Callable[[], None]] = []
        content.on_eof(self.release)

    @property
    def ok(self) -> bool:
        """Below 400, as aiohttp's ClientResponse.ok."""
        return self.status < 400

    @property
    def content_length(self) -> int | None:
        """The Content-Length header's value, None when absent or not a number."""
        value = self.headers.get("Content-Length")
        return int(value) if value is not None and value.isdigit() else None

    def on_done(self, callback: Callable[[], None]) -> None:
        """Call `callback` once, when the connection is released or closed."""
        if self._conn is None and self._deadline is None:
            callback()
        else:
            self._done.append(callback)

    async def read(self) -> bytes:
        """The whole body."""
        content = self.content
        if content.is_eof():
            # Usually all of it came with the headers: taken at once, without
            # the coroutine per chunk read() awaits (about half the cost).
            return content.read_nowait()
        return await content.read()

    def release(self) -> None:
        """Done with the answer: the connection goes back to the pool if the body
        was read whole (aiohttp's connector closes one with bytes still due)."""
        conn = self._end()
        if conn is not None:
            conn.release()

    def close(self) -> None:
        """Done with the answer: close the connection (stops the upstream's work)."""
        conn = self._end()
        if conn is not None:
            conn.close()

    def expire(self) -> None:
        """The deadline passed while the body was still coming."""
        set_exception(self.content, aiohttp.SocketTimeoutError("total timeout reached"))

    def _end(self) -> Connection | None:
        conn, self._conn = self._conn, None
        deadline, self._deadline = self._deadline, None
        if deadline is not None:
            deadline.cancel()
        done, self._done = self._done, []
        for callback in done:
            callback()
        return conn


class Transport(Protocol):
    """Sends requests to origins and hands back Replies."""

    def origin(self, base_url: str) -> Origin:
        """The origin of a base URL (http or https, with an optional path)."""
        ...

    async def send(
        self,
        origin: Origin,
        method: str,
        path_qs: str,
        headers: Iterable[tuple[str, str]],
        body: bytes,
        *,
        deadline: float,
        progress: Progress,
    ) -> Reply:
        """One request, no retries; `deadline` (loop time) bounds headers and
        body, `progress` learns how far the request got."""
        ...

    async def close(self) -> None:
        """Close every connection."""
        ...


class PooledTransport:
    """HTTP/1.1 over aiohttp's connector and response protocol, nothing per
    request beyond writing bytes and parsing the answer."""

    def __init__(
        self,
        *,
        limit: int,
        limit_per_host: int = 0,
        keepalive: float = 30.0,
        dns_ttl: float = 300.0,
        connect_timeout: float | None = None,
        read_timeout: float | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self._loop = asyncio.get_running_loop()
        self._connector = aiohttp.TCPConnector(
            limit=limit,
            limit_per_host=limit_per_host,
            keepalive_timeout=keepalive,
            use_dns_cache=True,
            ttl_dns_cache=int(dns_ttl),
            resolver=aiohttp.AsyncResolver(),
            ssl=ssl_context if ssl_context is not None else True,
        )
        self._connect_timeout = connect_timeout
        self._read_timeout = read_timeout
        # When each connection that served a request went idle: only these can
        # have gone stale (a fresh TLS one may hold an unread session ticket).
        self._idle_since: weakref.WeakKeyDictionary[ResponseHandler, float] = (
            weakref.WeakKeyDictionary()
        )

    def origin(self, base_url: str) -> Origin:
        """The origin of a base URL (http or https, with an optional path)."""
        base = URL(base_url)
        root = base.with_user(None).with_path("/").with_query(None).with_fragment(None)
        return Origin(base, ClientRequest("GET", root, loop=self._loop))

    async def close(self) -> None:
        """Close every pooled and open connection."""
        await self._connector.close()

    async def send(
        self,
        origin: Origin,
        method: str,
        path_qs: str,
        headers: Iterable[tuple[str, str]],
        body: bytes,
        *,
        deadline: float,
        progress: Progress,
    ) -> Reply:
        """One request, no retries; `deadline` (loop time) bounds headers and
        body, `progress` learns how far the request got."""
        head = _request_head(origin, method, path_qs, headers, body)
        conn = await self._connect(origin, deadline)
        progress.connect()
        protocol = conn.protocol
        transport = conn.transport
        if protocol is None or transport is None:
            conn.close()
            raise StaleConnection("connection closed by the upstream before use")
        try:
            idle_since = self._idle_since.get(protocol)
            if (
                idle_since is not None
                and self._loop.time() - idle_since >= _STALE_AFTER
                and _readable(transport)
            ):
                # Readable while idle means EOF or bytes nobody asked for.
                raise StaleConnection("connection closed by the upstream before use")
            skip_body = method == "HEAD"
            protocol.set_response_params(
                skip_payload=skip_body,
                read_until_eof=True,
                auto_decompress=False,
                read_timeout=self._read_timeout,
                read_bufsize=_READ_BUFSIZE,
                max_line_size=_MAX_LINE,
                max_field_size=_MAX_FIELD,
                max_headers=_MAX_HEADERS,
            )
            progress.written = True
            if body:
                transport.writelines((head, body))
            else:
                transport.write(head)
            protocol.start_timeout()
            # read_timeout alone bounds the wait for headers when it ends first
            # (nothing arrives to restart it), which spares a timer per request.
            timer = None
            read_timeout = self._read_timeout
            if read_timeout is None or deadline - self._loop.time() <= read_timeout:
                timer = self._loop.call_at(deadline, _expire_headers, protocol)
            try:
                message, payload = await protocol.read()
                while 100 <= message.code < 200:
                    if message.code == 101:
                        raise InvalidResponse("the upstream switched protocols")
                    if timer is None:
                        # Each 1xx restarts read_timeout: the deadline takes over.
                        timer = self._loop.call_at(deadline, _expire_headers, protocol)
                    message, payload = await protocol.read()
            finally:
                if timer is not None:
                    timer.cancel()
        except HttpProcessingError as exc:
            conn.close()
            raise InvalidResponse(f"malformed response: {exc.message}") from exc
        except BaseException:
            # Cancelled, timed out, reset: whatever is left on the wire
            # belongs to no one, so the connection is never reused.
            conn.close()
            raise
        reply = Reply(message.code, message.reason, message.headers, payload, conn)
        if not payload.is_eof():
            reply._deadline = self._loop.call_at(deadline, reply.expire)
        reply.on_done(functools.partial(self._went_idle, protocol))
        return reply

    def _went_idle(self, protocol: ResponseHandler) -> None:
        self._idle_since[protocol] = self._loop.time()

    async def _connect(self, origin: Origin, deadline: float) -> Connection:
        remaining = deadline - self._loop.time()
        # 0 would mean no limit at all to aiohttp.
        timeout = ClientTimeout(connect=max(remaining, 0.001), sock_connect=self._connect_timeout)
        try:
            return await self._connector.connect(origin.template, [], timeout)
        except TimeoutError as exc:
            if isinstance(exc, aiohttp.ClientError):
                raise
            # The connector's own deadline (no slot, no socket in time) is a
            # bare TimeoutError; ClientSession names it the same way.
            raise aiohttp.ConnectionTimeoutError("no connection in time") from exc


def _expire_headers(protocol: ResponseHandler) -> None:
    protocol.set_exception(aiohttp.SocketTimeoutError("total timeout reached"))


def _readable(transport: asyncio.Transport) -> bool:
    sock = transport.get_extra_info("socket")
    return sock is None or bool(select.select([sock], [], [], 0)[0])


def _request_head(
    origin: Origin, method: str, path_qs: str, headers: Iterable[tuple[str, str]], body: bytes
) -> bytes:
    """Request line and headers; a CR, LF or NUL inside a name or value is
    refused, as aiohttp's own writer does, so nothing can smuggle a header."""
    if _UNSAFE_TARGET.search(path_qs) or not path_qs.startswith("/"):
        raise ValueError("request target must be an encoded absolute path")
    fields = [f"{name}: {value}\r\n" for name, value in headers]
    if body or method in _BODY_METHODS:
        fields.append(f"Content-Length: {len(body)}\r\n")
    block = "".join(fields)
    count = len(fields)
    if block.count("\n") != count or block.count("\r") != count or "\0" in block:
        raise ValueError("a header name or value holds CR, LF or NUL")
    text = f"{method} {origin.prefix}{path_qs} HTTP/1.1\r\nHost: {origin.host}\r\n{block}\r\n"
    return text.encode("utf-8", "surrogateescape")
