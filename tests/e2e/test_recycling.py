"""Workers replaced while the gateway serves: after server.max_requests, and when
an event loop stops sending its heartbeat (server.worker_timeout)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from tests.conftest import FakeUpstream
from tests.e2e.conftest import DaemonProcess
from tests.e2e.test_workers import _alive, _chat, _children, _records, _start, _until

pytestmark = pytest.mark.e2e

StartDaemon = Callable[..., Awaitable[DaemonProcess]]

# Its sitecustomize makes SIGUSR1 block the receiving process's main thread.
HANG = Path(__file__).with_name("hang")


def _config(upstream_url: str, server: str, shutdown_timeout: str = "5s") -> str:
    return f"""
        server:
          listen: "{{listen}}"
          workers: 2
          shutdown_timeout: {shutdown_timeout}
          {server}
        upstreams:
          fake:
            url: {upstream_url}
        routes:
          v1:
            prefix: /v1/
            upstream: fake
        audit:
          sink: off
    """


async def test_workers_retire_after_max_requests_without_a_failed_request(
    start_daemon: StartDaemon, fake_upstream: FakeUpstream, tmp_path: Path
) -> None:
    """max_requests 50, 2 workers, 500 keep-alive requests from 4 clients: every one
    succeeds and the arbiter replaces a worker at least 8 times."""
    daemon = await _start(start_daemon, tmp_path, _config(fake_upstream.url, "max_requests: 50"))
    first = _children(daemon.proc.pid)

    async def client(count: int) -> list[int]:
        # Keep-alive on purpose: a retiring worker must close its connections
        # between requests, never under one.
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1)) as session:
            return [await _chat(session, daemon) for _ in range(count)]

    results = await asyncio.gather(*(client(125) for _ in range(4)))
    assert [status for statuses in results for status in statuses] == [200] * 500

    retired = [r for r in _records(daemon) if r["msg"] == "worker retiring after max_requests"]
    assert len(retired) >= 8
    restarts = await daemon.metric("gatewayd_worker_restarts_total", {"reason": "max_requests"})
    assert restarts == len(retired)
    # Retiring is not dying: no crash was logged, and the pool is back to two.
    assert not [r for r in _records(daemon) if r["msg"] == "worker died unexpectedly"]
    await _until(lambda: len(_children(daemon.proc.pid)) == 2, "two workers serve")
    assert not first & _children(daemon.proc.pid)


async def test_a_worker_whose_loop_is_stuck_is_killed_and_replaced(
    start_daemon: StartDaemon, fake_upstream: FakeUpstream, tmp_path: Path
) -> None:
    """A worker whose event loop blocks writes its stacks, is SIGKILLed after
    worker_timeout and replaced, and requests keep succeeding on the other worker."""
    run = tmp_path / "run"
    run.mkdir()
    daemon = await start_daemon(
        _config(fake_upstream.url, "worker_timeout: 2s"),
        env={"RUNTIME_DIRECTORY": str(run), "PYTHONPATH": f"{HANG}{os.pathsep}{os.getcwd()}"},
    )
    workers = _children(daemon.proc.pid)
    assert len(workers) == 2
    stuck = min(workers)
    os.kill(stuck, signal.SIGUSR1)
    # Let the handler start blocking; from then on it accepts nothing.
    await asyncio.sleep(0.3)

    statuses: list[int] = []
    connector = aiohttp.TCPConnector(force_close=True)
    async with aiohttp.ClientSession(connector=connector) as session:

        def replaced() -> bool:
            now = _children(daemon.proc.pid)
            return stuck not in now and len(now) == 2

        async def keep_asking() -> None:
            while True:
                statuses.append(await _chat(session, daemon))

        asker = asyncio.create_task(keep_asking())
        try:
            await _until(replaced, "the stuck worker is replaced")
        finally:
            asker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await asker
    assert statuses
    assert set(statuses) == {200}

    killed = [r for r in _records(daemon) if r["msg"] == "worker's event loop is stuck; killing it"]
    assert [r["pid"] for r in killed] == [stuck]
    assert killed[0]["silent_s"] >= 2
    # faulthandler's dump names the function the loop was stuck in.
    assert 'sitecustomize.py", line' in daemon.log()
    assert " in _hang" in daemon.log()
    assert await daemon.metric("gatewayd_worker_restarts_total", {"reason": "timeout"}) == 1
    async with aiohttp.ClientSession() as session:
        assert await _chat(session, daemon) == 200


async def test_a_stream_on_a_retiring_worker_runs_to_its_end(
    start_daemon: StartDaemon, fake_upstream: FakeUpstream, tmp_path: Path
) -> None:
    """The request that reaches max_requests is a stream longer than shutdown_timeout: the
    worker retires at once, the stream still arrives whole (ending the connection), and
    only then the worker exits."""
    text = _config(fake_upstream.url, "max_requests: 2", shutdown_timeout="200ms")
    daemon = await _start(start_daemon, tmp_path, text)
    fake_upstream.state.event_delay = 0.1
    body = {
        "model": "gpt-fake",
        "stream": True,
        "messages": [{"role": "user", "content": "a story that takes a while to tell"}],
    }
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1)) as session:
        async with session.get(f"{daemon.url}/health/detailed") as resp:
            pid = (await resp.json())["pid"]
        async with session.post(f"{daemon.url}/v1/chat/completions", json=body) as resp:
            assert resp.headers["Connection"] == "close"
            first = await resp.content.readline()
            await _until(
                lambda: any(
                    r["msg"] == "worker retiring after max_requests" and r["pid"] == pid
                    for r in _records(daemon)
                ),
                "the arbiter hears the worker retire",
            )
            assert _alive(pid)
            rest = await resp.content.read()
    events = [line[6:] for line in (first + rest).splitlines() if line.startswith(b"data: ")]
    assert events[-1] == b"[DONE]"
    answer = "".join(
        orjson.loads(e)["choices"][0]["delta"].get("content") or "" for e in events[:-1]
    )
    assert answer == "You said: a story that takes a while to tell"
    await _until(lambda: not _alive(pid), "the retired worker exits")

    def exits() -> list[dict[str, Any]]:
        return [r for r in _records(daemon) if r["msg"] == "worker exited" and r["pid"] == pid]

    # The arbiter reaps the worker first and logs it just after.
    await _until(lambda: bool(exits()), "the arbiter logs the exit")
    assert [r["exit"] for r in exits()] == ["exit status 0"]
