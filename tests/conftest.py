"""Shared fixtures: real PostgreSQL and Redis on loopback, or a skip that says why.

With GATEWAYD_REQUIRE_SERVICES=1 (CI) a missing service fails the test instead.
"""

from __future__ import annotations

import asyncio
import os
import socket
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

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
    except (TimeoutError, OSError, redis.RedisError) as exc:
        await client.aclose()
        service_missing("Redis", exc)
    await client.flushdb()
    yield REDIS_URL
    await client.flushdb()
    await client.aclose()


@pytest.fixture
async def postgres_dsn() -> str:
    """A reachable PostgreSQL DSN."""
    import asyncpg

    try:
        conn = await asyncio.wait_for(asyncpg.connect(POSTGRES_DSN), timeout=5)
    except (TimeoutError, OSError, asyncpg.PostgresError) as exc:
        service_missing("PostgreSQL", exc)
    await conn.close()
    return POSTGRES_DSN


@dataclass
class AuditDatabase:
    """A schema of its own in the test database: `dsn` puts gatewayd_audit there."""

    dsn: str
    schema: str
    conn: Any

    def via(self, port: int) -> str:
        """The same DSN through a loopback port of the test's (a TcpProxy)."""
        parts = urlsplit(self.dsn)
        host = f"{parts.username}@" if parts.username else ""
        return urlunsplit(parts._replace(netloc=f"{host}127.0.0.1:{port}"))

    async def rows(self, columns: str = "*") -> list[Any]:
        """Every row of the audit table, oldest first."""
        query = f"SELECT {columns} FROM gatewayd_audit ORDER BY ts"  # noqa: S608 - tests name columns
        return list(await self.conn.fetch(query))


@pytest.fixture
async def audit_db(postgres_dsn: str) -> AsyncIterator[AuditDatabase]:
    """A fresh schema for one test's audit table, dropped afterwards."""
    import asyncpg

    schema = f"gatewayd_test_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(postgres_dsn)
    await admin.execute(f"CREATE SCHEMA {schema}")
    separator = "&" if "?" in postgres_dsn else "?"
    dsn = f"{postgres_dsn}{separator}search_path={schema}"
    conn = await asyncpg.connect(dsn)
    try:
        yield AuditDatabase(dsn, schema, conn)
    finally:
        await conn.close()
        await admin.execute(f"DROP SCHEMA {schema} CASCADE")
        await admin.close()


@pytest.fixture
async def pg_proxy(postgres_dsn: str) -> AsyncIterator[Any]:
    """A TcpProxy in front of the test PostgreSQL, so a test can cut it away."""
    from tests.fakes.tcp_proxy import TcpProxy

    parts = urlsplit(postgres_dsn)
    proxy = TcpProxy(parts.hostname or "127.0.0.1", parts.port or 5432)
    await proxy.start()
    yield proxy
    await proxy.cut()


@pytest.fixture
async def fake_upstream(aiohttp_server: Any) -> FakeUpstream:
    """The fake OpenAI API on a loopback port, with its controls."""
    from tests.fakes.openai_upstream import FakeState, make_app

    state = FakeState()
    server = await aiohttp_server(make_app(state))
    return FakeUpstream(url=f"http://127.0.0.1:{server.port}", state=state)


@dataclass
class FakeUpstream:
    url: str
    state: Any


def free_port() -> int:
    """A loopback TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port
