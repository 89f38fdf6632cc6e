"""Shared fixtures: real PostgreSQL and Redis on loopback, or a skip that says why.

With GATEWAYD_REQUIRE_SERVICES=1 (CI) a missing service fails the test instead.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator

import pytest

POSTGRES_DSN = os.environ.get(
    "GATEWAYD_TEST_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/test"
)
REDIS_URL = os.environ.get("GATEWAYD_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
REQUIRE_SERVICES = os.environ.get("GATEWAYD_REQUIRE_SERVICES") == "1"


def service_missing(name: str, exc: BaseException) -> None:
    """Skip (or, when services are required, fail) because `name` is unreachable."""
    message = f"{name} unreachable: {type(exc).__name__}: {exc}"
    if REQUIRE_SERVICES:
        pytest.fail(f"{message} (GATEWAYD_REQUIRE_SERVICES=1)")
    pytest.skip(message)


@pytest.fixture
async def redis_url() -> AsyncIterator[str]:
    """A reachable Redis URL whose database is flushed before and after the test."""
    import redis.asyncio as redis

    client = redis.Redis.from_url(REDIS_URL)
    try:
        await asyncio.wait_for(client.ping(), timeout=2)
    except (OSError, asyncio.TimeoutError, redis.RedisError) as exc:
        await client.aclose()
        service_missing("Redis", exc)
    await client.flushdb()
    yield REDIS_URL
    await client.flushdb()
    await client.aclose()


@pytest.fixture
async def postgres_dsn() -> AsyncIterator[str]:
    """A reachable PostgreSQL DSN."""
    import asyncpg

    try:
        conn = await asyncio.wait_for(asyncpg.connect(POSTGRES_DSN), timeout=5)
    except (OSError, asyncio.TimeoutError, asyncpg.PostgresError) as exc:
        service_missing("PostgreSQL", exc)
    await conn.close()
    yield POSTGRES_DSN
