"""An in-memory Transport (upstream/transport.py's seam), as httpx's
MockTransport: a handler stands for the whole far side of the wire.

    handler(request) -> Answer                     the response headers arrived
                     -> raise Fault(stage)         the attempt failed at that stage

The handler may be a coroutine function; one that awaits holds its attempt in
flight before the connection is made, unless it calls request.connect() first.
Progress is filled in as PooledTransport would, so the upstream client reads
each outcome's stage exactly as it does off a socket.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field

import aiohttp
from aiohttp import ClientRequest
from aiohttp.base_protocol import BaseProtocol
from aiohttp.streams import StreamReader
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from gatewayd.upstream.outcome import CONNECT, SENT, Progress
from gatewayd.upstream.transport import Origin, Reply


@dataclass(frozen=True)
class Answer:
    """What the upstream answers: status, headers and the whole body."""

    status: int = 200
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes = b"ok"


class Fault(Exception):
    """Raised by a handler: the attempt fails at `stage` (outcome.CONNECT,
    RESET_BEFORE_REQUEST or SENT), by a timeout when `timeout` is true."""

    def __init__(self, stage: str, *, timeout: bool = False) -> None:
        super().__init__(stage)
        self.stage = stage
        self.timeout = timeout

    def error(self) -> aiohttp.ClientError:
        """The aiohttp exception PooledTransport raises for this failure."""
        if self.stage == CONNECT:
            if self.timeout:
                return aiohttp.ConnectionTimeoutError("no connection in time")
            return aiohttp.ClientConnectionError("connection refused")
        if self.stage == SENT and self.timeout:
            return aiohttp.SocketTimeoutError("no response in time")
        return aiohttp.ServerDisconnectedError()


@dataclass
class Request:
    """One request as the transport got it; `connect()` marks its connection made."""

    host: str
    method: str
    path_qs: str
    headers: list[tuple[str, str]]
    body: bytes
    progress: Progress

    def connect(self) -> None:
        """The connection to the upstream is made (before any answer or fault)."""
        self.progress.connect()


Handler = Callable[[Request], Answer | Awaitable[Answer]]


class MockTransport:
    """Sends every request to `handler` and records it in `requests`."""

    def __init__(self, handler: Handler) -> None:
        self._handler = handler
        self.requests: list[Request] = []

    def origin(self, base_url: str) -> Origin:
        """The origin of a base URL, as PooledTransport.origin makes it."""
        base = URL(base_url)
        root = base.with_user(None).with_path("/").with_query(None).with_fragment(None)
        return Origin(base, ClientRequest("GET", root, loop=asyncio.get_running_loop()))

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
        """The handler's Answer as a Reply with its body already in, or its Fault
        as the aiohttp exception a socket would have given."""
        request = Request(origin.host, method, path_qs, list(headers), body, progress)
        self.requests.append(request)
        try:
            result = self._handler(request)
            answer = await result if inspect.isawaitable(result) else result
        except Fault as fault:
            if fault.stage != CONNECT:
                progress.connect()
            progress.written = fault.stage == SENT
            raise fault.error() from None
        progress.connect()
        progress.written = True
        loop = asyncio.get_running_loop()
        content = StreamReader(BaseProtocol(loop), 2**16, loop=loop)
        content.feed_data(answer.body)
        content.feed_eof()
        headers_in = CIMultiDictProxy(CIMultiDict(answer.headers))
        return Reply(answer.status, "", headers_in, content)

    async def close(self) -> None:
        """Nothing to close."""
