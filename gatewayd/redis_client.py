"""A lean Redis client: one pipelined connection per URL, shared by the whole process.

The rate limiter asks Redis once or twice per request, so the client's own
cost is the limiter's cost: redis-py's asyncio client spends about 125 µs of
CPU per command (a pooled connection checked out and in, its stream reader),
more than the rest of a proxied request's limiter work. Here every caller
shares one connection: a command is packed and written by hiredis's C code,
its reply future queued, and replies, which Redis sends in order, are parsed
by hiredis and handed to the futures in turn (about 20 µs per command).

Callers bound each command with asyncio.timeout. One that stops waiting
leaves its future in the queue, so the replies that follow still find their
own. A lost connection fails every waiting command; the next command connects
again, so Redis coming back needs no restart.

    RedisUnavailable      no connection, or a lost one: try later
    RedisReplyError       Redis answered with an error (`-ERR ...`)

`RedisClients` hands out one client per URL (the limiter's and every Presidio
cache's), owned by the daemon and closed when it stops.
"""

from __future__ import annotations

import asyncio
import binascii
import collections
import contextlib
import hashlib
import ssl
from typing import Any, cast
from urllib.parse import unquote, urlsplit

import hiredis

from gatewayd.errors import GatewayError

Reply = Any


class RedisUnavailable(GatewayError):
    """Redis cannot be reached now; `kind` is a fixed word (connection, timeout)."""

    def __init__(self, kind: str) -> None:
        super().__init__(kind)
        self.kind = kind


class RedisReplyError(GatewayError):
    """Redis refused the command; the message is Redis's, which quotes no values."""


class _Protocol(asyncio.Protocol):
    __slots__ = ("_loop", "_outgoing", "_reader", "_waiting", "lost", "transport")

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._reader = hiredis.Reader()
        self._waiting: collections.deque[asyncio.Future[Reply]] = collections.deque()
        # Commands packed during this turn of the loop, written together at
        # its end: a write is a syscall, and concurrent requests share it.
        self._outgoing: list[bytes] = []
        self.transport: asyncio.Transport | None = None
        self.lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        reader = self._reader
        reader.feed(data)
        while (reply := reader.gets()) is not False:
            if not self._waiting:
                # A reply nobody asked for: the stream cannot be trusted.
                self._fail()
                return
            future = self._waiting.popleft()
            if future.done():
                continue  # its caller stopped waiting
            if isinstance(reply, hiredis.ReplyError):
                future.set_exception(RedisReplyError(str(reply)))
            else:
                future.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        for future in self._waiting:
            if not future.done():
                future.set_exception(RedisUnavailable("connection"))
        self._waiting.clear()

    def send(self, packed: bytes) -> asyncio.Future[Reply]:
        future: asyncio.Future[Reply] = self._loop.create_future()
        self._waiting.append(future)
        if not self._outgoing:
            self._loop.call_soon(self._flush)
        self._outgoing.append(packed)
        return future

    def _flush(self) -> None:
        outgoing, self._outgoing = self._outgoing, []
        if self.transport is not None and not self.lost:
            self.transport.write(b"".join(outgoing) if len(outgoing) > 1 else outgoing[0])

    def _fail(self) -> None:
        if self.transport is not None:
            self.transport.abort()


class _Node:
    """One pipelined connection to one Redis server, made again when lost."""

    def __init__(
        self,
        host: str,
        port: int,
        tls: ssl.SSLContext | None,
        hello: list[tuple[Any, ...]],
        connect_timeout: float,
    ) -> None:
        self._address = (host, port)
        self._ssl = tls
        # AUTH (and SELECT), sent first on every new connection.
        self._hello = hello
        self._connect_timeout = connect_timeout
        self._protocol: _Protocol | None = None
        self._connecting: asyncio.Task[_Protocol] | None = None

    async def send(self, commands: tuple[tuple[Any, ...], ...]) -> list[asyncio.Future[Reply]]:
        """Write `commands` back to back; their reply futures, in order."""
        try:
            protocol = await self._connected()
        except OSError as exc:
            raise RedisUnavailable("connection") from exc
        return [protocol.send(hiredis.pack_command(c)) for c in commands]

    async def _connected(self) -> _Protocol:
        protocol = self._protocol
        if protocol is not None and not protocol.lost:
            return protocol
        # Callers arriving while a connection is being made share it.
        connecting = self._connecting
        if connecting is None:
            connecting = self._connecting = asyncio.ensure_future(self._connect())
        try:
            # shield: one caller timing out must not cancel the others' connect.
            return await asyncio.shield(connecting)
        finally:
            if connecting.done() and self._connecting is connecting:
                self._connecting = None

    async def _connect(self) -> _Protocol:
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(self._connect_timeout):
            host, port = self._address
            _, protocol = await loop.create_connection(_Protocol, host, port, ssl=self._ssl)
            for command in self._hello:
                await protocol.send(hiredis.pack_command(command))
        self._protocol = protocol
        return protocol

    async def close(self) -> None:
        if self._connecting is not None:
            self._connecting.cancel()
        protocol = self._protocol
        self._protocol = None
        if protocol is not None and protocol.transport is not None:
            protocol.transport.close()


class RedisClient:
    """Commands to the Redis at `url`: one server, or a Redis Cluster reached through it.

    A cluster node that does not serve a key's slot answers MOVED (the slot
    lives elsewhere now) or ASK (it is moving); the command is sent where it
    says, and a MOVED slot is remembered, so the next command for it goes
    straight to its node. Commands name their key for that (`key=`); keys
    with one hash tag share a slot, so a script's keys stay together.
    """

    def __init__(self, url: str, *, connect_timeout: float = 1.0) -> None:
        parts = urlsplit(url)
        self._ssl = ssl.create_default_context() if parts.scheme == "rediss" else None
        self._connect_timeout = connect_timeout
        self._auth: list[tuple[Any, ...]] = []
        if parts.password is not None:
            password = unquote(parts.password)
            user = unquote(parts.username) if parts.username else None
            self._auth.append(("AUTH", user, password) if user else ("AUTH", password))
        db = parts.path.strip("/")
        select = [("SELECT", int(db))] if db and db != "0" else []
        self._entry = (parts.hostname or "127.0.0.1", parts.port or 6379)
        self._nodes = {self._entry: self._node(self._entry, self._auth + select)}
        # Slot -> node, learnt from MOVED answers; empty outside a cluster.
        self._slots: dict[int, tuple[str, int]] = {}

    async def call(self, *args: Any, key: str | None = None) -> Reply:
        """One command's reply, or RedisUnavailable / RedisReplyError. Callers
        bound it with asyncio.timeout: their deadlines differ."""
        address = self._entry
        if key is not None and self._slots:
            address = self._slots.get(slot(key), self._entry)
        asking = False
        for _ in range(_REDIRECTS):
            node = self._nodes.get(address) or self._add(address)
            commands = (("ASKING",), args) if asking else (args,)
            futures = await node.send(commands)
            try:
                for future in futures[:-1]:
                    await future
                return await futures[-1]
            except RedisReplyError as exc:
                redirect = _redirect(str(exc))
                if redirect is None:
                    raise
                moved, number, address = redirect
                if moved:
                    self._slots[number] = address
                asking = not moved
        raise RedisUnavailable("redirects")

    async def warm(self) -> None:
        """Connect now rather than on the first command; a Redis that is down is no error."""
        with contextlib.suppress(RedisUnavailable, RedisReplyError, OSError):
            await self.call("PING")

    def _node(self, address: tuple[str, int], hello: list[tuple[Any, ...]]) -> _Node:
        return _Node(address[0], address[1], self._ssl, hello, self._connect_timeout)

    def _add(self, address: tuple[str, int]) -> _Node:
        # Cluster nodes serve database 0 only: no SELECT.
        node = self._nodes[address] = self._node(address, self._auth)
        return node

    async def close(self) -> None:
        for node in self._nodes.values():
            await node.close()


# A command is sent on at most this many times while a cluster reshards.
_REDIRECTS = 5


def _redirect(message: str) -> tuple[bool, int, tuple[str, int]] | None:
    """(moved, slot, node) of a `MOVED 3999 127.0.0.1:6381` or `ASK ...` answer."""
    kind, _, rest = message.partition(" ")
    if kind not in ("MOVED", "ASK"):
        return None
    number, _, node = rest.partition(" ")
    host, _, port = node.rpartition(":")
    if not number.isdigit() or not port.isdigit():
        return None
    return kind == "MOVED", int(number), (host.strip("[]"), int(port))


def slot(key: str) -> int:
    """The cluster slot of `key`: CRC16 (XMODEM) of its hash tag, or of the whole key."""
    data = key.encode()
    start = data.find(b"{")
    if start >= 0:
        end = data.find(b"}", start + 1)
        if end > start + 1:
            data = data[start + 1 : end]
    return binascii.crc_hqx(data, 0) % 16384


class Script:
    """A Lua script run by its SHA1, loaded into Redis (EVAL) the first time it is missing."""

    def __init__(self, source: str) -> None:
        self._source = source
        self._sha = hashlib.sha1(source.encode(), usedforsecurity=False).hexdigest()

    async def __call__(
        self, client: RedisClient, keys: tuple[str, ...], args: tuple[Any, ...]
    ) -> Reply:
        first = keys[0] if keys else None
        try:
            return await client.call("EVALSHA", self._sha, len(keys), *keys, *args, key=first)
        except RedisReplyError as exc:
            if not str(exc).startswith("NOSCRIPT"):
                raise
        # A restarted or flushed Redis lost it: EVAL runs it and loads it again.
        return await client.call("EVAL", self._source, len(keys), *keys, *args, key=first)


class RedisClients:
    """One RedisClient per URL for the process: the limiter and the caches share them."""

    def __init__(self) -> None:
        self._clients: dict[str, RedisClient] = {}

    def client(self, url: str) -> RedisClient:
        client = self._clients.get(url)
        if client is None:
            client = self._clients[url] = RedisClient(url)
        return client

    async def close(self) -> None:
        for client in self._clients.values():
            await client.close()
        self._clients.clear()
