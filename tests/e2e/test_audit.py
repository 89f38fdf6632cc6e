"""The PostgreSQL audit trail through the real daemon: SIGTERM, kill -9, and two workers."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest

from tests.conftest import AuditDatabase, FakeUpstream
from tests.e2e.conftest import DaemonProcess
from tests.fakes.tcp_proxy import TcpProxy

pytestmark = pytest.mark.e2e

StartDaemon = Callable[..., Awaitable[DaemonProcess]]

CHAT = {"model": "gpt-fake", "messages": [{"role": "user", "content": "ping"}]}


def _config(upstream_url: str, dsn: str, *, workers: int = 1, flush: str = "100ms") -> str:
    return f"""
        server:
          listen: "{{listen}}"
          workers: {workers}
          shutdown_timeout: 5s
        logging:
          level: info
        upstreams:
          fake:
            url: {upstream_url}
        routes:
          v1:
            prefix: /v1/
            upstream: fake
        audit:
          sink: postgres
          postgres_dsn: "{dsn}"
          batch_size: 1000
          queue_size: 10000
          flush_interval: {flush}
          write_timeout: 1s
    """


async def _requests(daemon: DaemonProcess, count: int) -> list[str]:
    """`count` chats, each on a new connection (so workers share them); their request ids."""
    connector = aiohttp.TCPConnector(force_close=True)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def one() -> str:
            async with session.post(f"{daemon.url}/v1/chat/completions", json=CHAT) as resp:
                assert resp.status == 200
                return resp.headers["X-Request-Id"]

        return list(await asyncio.gather(*(one() for _ in range(count))))


async def _eventually(check: Callable[[], Awaitable[bool]], within: float = 20.0) -> None:
    deadline = time.monotonic() + within
    while not await check():
        if time.monotonic() > deadline:
            pytest.fail(f"not within {within}s")
        await asyncio.sleep(0.1)


async def _spooled(daemon: DaemonProcess, count: int) -> None:
    async def check() -> bool:
        return await daemon.metric("gatewayd_audit_events_total", {"outcome": "spooled"}) == count

    await _eventually(check)


async def _count(db: AuditDatabase) -> int:
    """Rows in the audit table; 0 before gatewayd created it."""
    if await db.conn.fetchval("SELECT to_regclass('gatewayd_audit')") is None:
        return 0
    count: int = await db.conn.fetchval("SELECT count(*) FROM gatewayd_audit")
    return count


async def _rows(db: AuditDatabase, count: int) -> list[str]:
    """The table's request ids, once it holds `count` rows."""

    async def check() -> bool:
        return await _count(db) == count

    await _eventually(check)
    return [row["request_id"] for row in await db.rows("request_id")]


async def test_sigterm_writes_the_queue_to_the_database_before_exit(
    start_daemon: StartDaemon, fake_upstream: FakeUpstream, audit_db: AuditDatabase
) -> None:
    """Events still queued at SIGTERM (a minute's flush interval) are in the table at exit."""
    daemon = await start_daemon(_config(fake_upstream.url, audit_db.dsn, flush="60s"))
    ids = await _requests(daemon, 50)
    assert await _count(audit_db) == 0
    daemon.signal(signal.SIGTERM)
    assert await asyncio.wait_for(daemon.proc.wait(), timeout=20) == 0
    assert sorted(await _rows(audit_db, 50)) == sorted(ids)


async def test_kill_9_then_restart_replays_the_spool(
    start_daemon: StartDaemon,
    fake_upstream: FakeUpstream,
    audit_db: AuditDatabase,
    pg_proxy: TcpProxy,
    tmp_path: Path,
) -> None:
    """Spooled events survive kill -9, and the next start stores each of them once."""
    config = _config(fake_upstream.url, audit_db.via(pg_proxy.port))
    await pg_proxy.cut()
    daemon = await start_daemon(config)
    ids = await _requests(daemon, 40)
    await _spooled(daemon, 40)
    daemon.proc.kill()
    await daemon.proc.wait()
    assert not await _empty(tmp_path / "audit-spool")
    await pg_proxy.restore()
    await start_daemon(config)
    assert sorted(await _rows(audit_db, 40)) == sorted(ids)
    await _eventually(lambda: _empty(tmp_path / "audit-spool"))


async def test_two_workers_spooling_at_once_replay_without_loss_or_duplicates(
    start_daemon: StartDaemon,
    fake_upstream: FakeUpstream,
    audit_db: AuditDatabase,
    pg_proxy: TcpProxy,
    tmp_path: Path,
) -> None:
    """Two workers each spool their own files; every event lands once when the database is back."""
    await pg_proxy.cut()
    daemon = await start_daemon(_config(fake_upstream.url, audit_db.via(pg_proxy.port), workers=2))
    ids = await _requests(daemon, 200)
    await _spooled(daemon, 200)
    spool = tmp_path / "audit-spool"
    assert len(await asyncio.to_thread(lambda: list(spool.glob("*.lock")))) == 2
    await pg_proxy.restore()
    rows = await _rows(audit_db, 200)
    assert sorted(rows) == sorted(ids)
    await _eventually(lambda: _empty(spool))
    assert await daemon.metric("gatewayd_audit_events_total", {"outcome": "replayed"}) == 200


async def _empty(spool: Path) -> bool:
    """Whether no spool segment is left."""
    return not await asyncio.to_thread(lambda: list(spool.glob("*.spool")))
