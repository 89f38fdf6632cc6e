"""Reply.read: the whole body, whether it all came with the headers or comes later."""

from __future__ import annotations

import asyncio

from aiohttp.base_protocol import BaseProtocol
from aiohttp.streams import StreamReader
from multidict import CIMultiDict, CIMultiDictProxy

from gatewayd.upstream.transport import Reply


def _reply(content: StreamReader) -> Reply:
    return Reply(200, "OK", CIMultiDictProxy(CIMultiDict()), content)


def _content() -> StreamReader:
    loop = asyncio.get_running_loop()
    protocol = BaseProtocol(loop)
    # A reader waits for more only while its connection is up.
    protocol.connection_made(asyncio.Transport())
    return StreamReader(protocol, 2**16, loop=loop)


async def test_a_body_already_whole_is_read_at_once() -> None:
    content = _content()
    content.feed_data(b"ab")
    content.feed_data(b"c")
    content.feed_eof()
    assert await _reply(content).read() == b"abc"


async def test_a_body_still_coming_is_read_to_its_end() -> None:
    content = _content()
    content.feed_data(b"ab")
    reading = asyncio.ensure_future(_reply(content).read())
    await asyncio.sleep(0)
    content.feed_data(b"c")
    content.feed_eof()
    assert await reading == b"abc"


async def test_an_empty_body_is_empty() -> None:
    content = _content()
    content.feed_eof()
    assert await _reply(content).read() == b""
