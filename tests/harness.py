"""Start a gateway in-process, the way the daemon serves it, for integration tests."""

from __future__ import annotations

import textwrap
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from gatewayd.app import make_app
from gatewayd.audit.writer import AuditWriter
from gatewayd.config import load
from gatewayd.config.schema import Config
from gatewayd.daemon import make_runner
from gatewayd.ratelimit.limiter import Limiter
from gatewayd.redis_client import RedisClients
from gatewayd.runtime import RuntimeHolder, build_runtime


@dataclass
class Gateway:
    url: str
    app: web.Application
    holder: RuntimeHolder
    redis: RedisClients


def write_config(directory: Path, text: str, name: str = "gatewayd.yaml") -> Config:
    """Write a YAML config (dedented) next to the test and load it."""
    path = directory / name
    path.write_text(textwrap.dedent(text))
    return load(path)


@asynccontextmanager
async def running_gateway(config: Config) -> AsyncIterator[Gateway]:
    """A gateway on an ephemeral loopback port, torn down like the daemon does."""
    redis = RedisClients()
    holder = RuntimeHolder(build_runtime(config, 1, redis))
    app = make_app(holder, AuditWriter(config.audit), Limiter(config.ratelimit, redis), redis)
    runner = make_runner(app, config.server)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield Gateway(url=f"http://127.0.0.1:{port}", app=app, holder=holder, redis=redis)
    finally:
        await runner.cleanup()
