"""The lean Redis client against the real Redis: pipelining, timeouts, scripts, reconnects."""

from __future__ import annotations

import asyncio
from urllib.parse import urlsplit

import pytest
import redis.asyncio as redis

from gatewayd.redis_client import RedisClient, RedisReplyError, RedisUnavailable, Script
from tests.fakes.tcp_proxy import TcpProxy


async def test_concurrent_commands_each_get_their_own_reply(redis_url: str) -> None:
    """Many callers on the one connection each get the reply to their command."""
    client = RedisClient(redis_url)
    try:
        replies = await asyncio.gather(*(client.call("INCRBY", f"k{n}", n) for n in range(200)))
        assert replies == list(range(200))
    finally:
        await client.close()


async def test_the_url_selects_its_database(redis_url: str) -> None:
    """A /N in the URL selects database N on every connection."""
    client = RedisClient(redis_url)
    other = redis.Redis.from_url(redis_url)
    try:
        await client.call("SET", "where", "here")
        assert await other.get("where") == b"here"
    finally:
        await client.close()
        await other.aclose()


async def test_a_caller_that_stops_waiting_shifts_no_reply(redis_url: str) -> None:
    """A timed-out command's late reply goes nowhere; the next caller gets its own."""
    client = RedisClient(redis_url)
    try:
        await client.call("SET", "mine", "value")
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.05):
                await client.call("BLPOP", "never", 0.3)
        assert await client.call("GET", "mine") == b"value"
    finally:
        await client.close()


async def test_redis_errors_are_reply_errors(redis_url: str) -> None:
    """An error reply raises RedisReplyError and leaves the connection usable."""
    client = RedisClient(redis_url)
    try:
        await client.call("SET", "text", "abc")
        with pytest.raises(RedisReplyError):
            await client.call("INCR", "text")
        assert await client.call("PING") == b"PONG"
    finally:
        await client.close()


async def test_a_script_is_loaded_again_after_a_flush(redis_url: str) -> None:
    """A script Redis lost (SCRIPT FLUSH, a restart) is sent whole and works."""
    client = RedisClient(redis_url)
    script = Script("return tonumber(ARGV[1]) + 1")
    try:
        assert await script(client, (), (1,)) == 2
        await client.call("SCRIPT", "FLUSH")
        assert await script(client, (), (41,)) == 42
    finally:
        await client.close()


async def test_a_lost_connection_fails_fast_and_comes_back(redis_url: str) -> None:
    """Cut from Redis, commands raise RedisUnavailable; once it is back they work again."""
    parts = urlsplit(redis_url)
    proxy = TcpProxy(parts.hostname or "127.0.0.1", parts.port or 6379)
    await proxy.start()
    client = RedisClient(f"redis://127.0.0.1:{proxy.port}{parts.path}")
    try:
        assert await client.call("PING") == b"PONG"
        waiting = asyncio.ensure_future(client.call("BLPOP", "never", 5))
        await asyncio.sleep(0.05)
        await proxy.cut()
        with pytest.raises(RedisUnavailable):
            await waiting
        with pytest.raises(RedisUnavailable):
            await client.call("PING")
        await proxy.restore()
        assert await client.call("PING") == b"PONG"
    finally:
        await client.close()
        await proxy.cut()
