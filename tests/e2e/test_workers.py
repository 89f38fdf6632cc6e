"""server.workers: 2 as a real process group: an arbiter, two forked workers
sharing the listening socket the arbiter bound, signals relayed, metrics added up."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import signal
import socket
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import openai
import orjson
import pytest

from tests.conftest import FakeUpstream
from tests.e2e.conftest import DaemonProcess

pytestmark = pytest.mark.e2e

StartDaemon = Callable[..., Awaitable[DaemonProcess]]

CHAT = {"model": "gpt-fake", "messages": [{"role": "user", "content": "ping"}]}


def _config(upstream_url: str, *, workers: int = 2, extra_routes: str = "") -> str:
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
          fake_v1:
            url: {upstream_url}/v1
        routes:
          v1:
            prefix: /v1/
            upstream: fake
        {extra_routes}
        audit:
          sink: jsonl
          path: ${{STATE_DIRECTORY}}/audit.jsonl
    """


# A second route, indented to sit under `routes:` in _config.
V2_ROUTE = """  v2:
                prefix: /v2/
                upstream: fake_v1
                strip_prefix: true"""


async def _start(
    start_daemon: StartDaemon, tmp_path: Path, text: str, *, ready: bool = True
) -> DaemonProcess:
    """Start gatewayd with $RUNTIME_DIRECTORY in tmp_path, where its metrics files go."""
    run = tmp_path / "run"
    run.mkdir(exist_ok=True)
    return await start_daemon(text, env={"RUNTIME_DIRECTORY": str(run)}, ready=ready)


def _records(daemon: DaemonProcess) -> list[dict[str, Any]]:
    """The daemon's JSON log lines, parsed."""
    return [orjson.loads(line) for line in daemon.log().splitlines() if line.startswith("{")]


def _proc_state(pid: int) -> tuple[str, int] | None:
    """(state, parent pid) of a process from /proc, or None when it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name may hold spaces and parentheses: split after the last ')'.
    state, ppid = text.rsplit(")", 1)[1].split()[:2]
    return state, int(ppid)


def _alive(pid: int) -> bool:
    """Whether `pid` is a process that has not exited (a zombie has)."""
    state = _proc_state(pid)
    return state is not None and state[0] != "Z"


def _children(pid: int) -> set[int]:
    """The live processes whose parent is `pid`."""
    found: set[int] = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            state = _proc_state(int(entry.name))
            if state is not None and state[1] == pid and state[0] != "Z":
                found.add(int(entry.name))
    return found


async def _until(predicate: Callable[[], bool], what: str) -> None:
    """Poll `predicate` every 50 ms until it holds; fail after 10 s saying `what` never happened."""
    try:
        async with asyncio.timeout(10):
            while True:
                if predicate():
                    return
                await asyncio.sleep(0.05)
    except TimeoutError:
        raise AssertionError(f"timed out waiting until {what}") from None


def _drain_notifications(daemon: DaemonProcess) -> list[str]:
    """Every sd_notify datagram received so far, without waiting for more."""
    while True:
        try:
            daemon.messages.append(daemon.notify.recv(4096).decode())
        except BlockingIOError:
            return daemon.messages


async def _pid(session: aiohttp.ClientSession, daemon: DaemonProcess) -> int:
    """The pid of the worker that answers /health/detailed on this session."""
    async with session.get(f"{daemon.url}/health/detailed") as resp:
        pid: int = (await resp.json())["pid"]
        return pid


async def _fresh_pids(daemon: DaemonProcess, want: int, tries: int = 200) -> set[int]:
    """Worker pids answering over new connections, until `want` distinct ones were seen."""
    seen: set[int] = set()
    connector = aiohttp.TCPConnector(force_close=True)
    async with aiohttp.ClientSession(connector=connector) as session:
        for _ in range(tries):
            with contextlib.suppress(aiohttp.ClientConnectionError):
                seen.add(await _pid(session, daemon))
            if len(seen) >= want:
                break
    return seen


@contextlib.asynccontextmanager
async def _per_worker(
    daemon: DaemonProcess, count: int = 2
) -> AsyncIterator[dict[int, aiohttp.ClientSession]]:
    """One session per worker pid, each held on a single keep-alive connection to it."""
    sessions: dict[int, aiohttp.ClientSession] = {}
    spare: list[aiohttp.ClientSession] = []
    try:
        for _ in range(200):
            if len(sessions) == count:
                break
            session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1))
            pid = await _pid(session, daemon)
            if pid in sessions:
                spare.append(session)
            else:
                sessions[pid] = session
        assert len(sessions) == count, f"saw workers {sorted(sessions)}"
        yield sessions
        for pid, session in sessions.items():
            assert await _pid(session, daemon) == pid, "the connection moved to another worker"
    finally:
        for session in (*sessions.values(), *spare):
            await session.close()


async def _chat(session: aiohttp.ClientSession, daemon: DaemonProcess, prefix: str = "/v1") -> int:
    """POST one chat completion; its status (and the echo checked when 200)."""
    async with session.post(f"{daemon.url}{prefix}/chat/completions", json=CHAT) as resp:
        if resp.status == 200:
            assert (await resp.json())["choices"][0]["message"]["content"] == "You said: ping"
        return resp.status


async def test_two_workers_serve_and_ready_comes_once_both_listen(
    start_daemon: StartDaemon, fake_upstream: FakeUpstream, tmp_path: Path
) -> None:
    """READY=1 comes once, after both workers listen; the arbiter's two children share traffic."""
    daemon = await _start(start_daemon, tmp_path, _config(fake_upstream.url))
    ready_lines = [r for r in _records(daemon) if r["msg"] == "worker ready"]
    assert len(ready_lines) == 2
    workers = _children(daemon.proc.pid)
    assert len(workers) == 2
    assert {r["pid"] for r in ready_lines} == workers

    assert await _fresh_pids(daemon, want=2) == workers
    client = openai.AsyncOpenAI(base_url=f"{daemon.url}/v1", api_key="sk-client", max_retries=0)
    for _ in range(4):
        chat = await client.chat.completions.create(
            model="gpt-fake", messages=[{"role": "user", "content": "ping"}]
        )
        assert chat.choices[0].message.content == "You said: ping"
    await client.close()
    # Once: from the arbiter, never from the workers themselves.
    assert sum("READY=1" in m for m in _drain_notifications(daemon)) == 1


async def test_metrics_and_audit_cover_every_worker(
    start_daemon: StartDaemon, fake_upstream: FakeUpstream, tmp_path: Path
) -> None:
    """50 requests on new connections: 50 on each worker's /metrics, and 50 audit lines."""
    daemon = await _start(start_daemon, tmp_path, _config(fake_upstream.url))
    connector = aiohttp.TCPConnector(force_close=True)
    async with aiohttp.ClientSession(connector=connector) as session:
        statuses = [await _chat(session, daemon) for _ in range(50)]
    assert statuses == [200] * 50

    async with _per_worker(daemon) as sessions:
        for session in sessions.values():
            async with session.get(f"{daemon.url}/metrics") as resp:
                text = await resp.text()
            assert 'gatewayd_requests_total{route="v1",status="200"} 50.0' in text
            assert 'gatewayd_build_info{version="' in text
            assert "gatewayd_config_generation 1.0" in text

    daemon.signal(signal.SIGTERM)
    assert await asyncio.wait_for(daemon.proc.wait(), timeout=20) == 0
    lines = (tmp_path / "audit.jsonl").read_bytes().splitlines()
    events = [orjson.loads(line) for line in lines]
    assert len(events) == 50
    assert {e["status"] for e in events} == {200}


async def test_sighup_reloads_every_worker(
    start_daemon: StartDaemon, fake_upstream: FakeUpstream, tmp_path: Path
) -> None:
    """A good config on SIGHUP reaches both workers: the new route answers on each, generation 2."""
    daemon = await _start(start_daemon, tmp_path, _config(fake_upstream.url))
    async with _per_worker(daemon) as sessions:
        for session in sessions.values():
            assert await _chat(session, daemon, "/v2") == 404

        daemon.write_config(_config(fake_upstream.url, extra_routes=V2_ROUTE))
        daemon.signal(signal.SIGHUP)
        messages = await daemon.notifications("READY=1", count=2)
        assert any("RELOADING=1" in m and "MONOTONIC_USEC=" in m for m in messages)

        for session in sessions.values():
            assert await _chat(session, daemon, "/v2") == 200
            async with session.get(f"{daemon.url}/health/detailed") as resp:
                assert (await resp.json())["config"]["generation"] == 2
    assert fake_upstream.state.received[-1].path == "/v1/chat/completions"
    # Counted once per reload by the arbiter, not once per worker.
    assert await daemon.metric("gatewayd_config_reloads_total", {"result": "success"}) == 1
    assert await daemon.metric("gatewayd_config_generation") == 2


async def test_sighup_with_a_bad_config_keeps_every_worker_serving(
    start_daemon: StartDaemon, fake_upstream: FakeUpstream, tmp_path: Path
) -> None:
    """A bad config is refused by the arbiter with file and line; workers never see it; READY=1."""
    daemon = await _start(start_daemon, tmp_path, _config(fake_upstream.url))
    daemon.write_config(_config(fake_upstream.url).replace("prefix: /v1/", "prefix: v1-no-slash"))
    daemon.signal(signal.SIGHUP)
    await daemon.notifications("READY=1", count=2)
    log = daemon.log()
    assert "gatewayd.yaml:" in log
    assert "routes.v1.prefix" in log
    # The workers' own reload would have logged this; they were never signalled.
    assert "still serving the previous configuration" not in log

    async with _per_worker(daemon) as sessions:
        for session in sessions.values():
            assert await _chat(session, daemon) == 200
            async with session.get(f"{daemon.url}/health/detailed") as resp:
                assert (await resp.json())["config"]["generation"] == 1
    assert await daemon.metric("gatewayd_config_reloads_total", {"result": "error"}) == 1


async def test_a_killed_worker_is_replaced(
    start_daemon: StartDaemon, fake_upstream: FakeUpstream, tmp_path: Path
) -> None:
    """SIGKILL of a worker is logged and a new worker serves; the dead one's counts survive."""
    daemon = await _start(start_daemon, tmp_path, _config(fake_upstream.url))
    connector = aiohttp.TCPConnector(force_close=True)
    async with aiohttp.ClientSession(connector=connector) as session:
        assert [await _chat(session, daemon) for _ in range(10)] == [200] * 10
    first = _children(daemon.proc.pid)
    victim = min(first)
    os.kill(victim, signal.SIGKILL)

    await _until(lambda: len(_children(daemon.proc.pid) - first) == 1, "a worker is respawned")
    (newcomer,) = _children(daemon.proc.pid) - first
    await _until(
        lambda: any(r["msg"] == "worker ready" and r["pid"] == newcomer for r in _records(daemon)),
        "the new worker is ready",
    )
    assert await _fresh_pids(daemon, want=2) == (first - {victim}) | {newcomer}
    died = [r for r in _records(daemon) if r["msg"] == "worker died unexpectedly"]
    assert [(r["pid"], r["exit"]) for r in died] == [(victim, "signal SIGKILL")]
    assert await daemon.metric("gatewayd_requests_total", {"route": "v1", "status": "200"}) == 10
    # Still one READY=1: a respawn is not a new start.
    assert sum("READY=1" in m for m in _drain_notifications(daemon)) == 1


async def test_sigterm_drains_then_leaves_no_worker_and_no_metrics_files(
    start_daemon: StartDaemon, fake_upstream: FakeUpstream, tmp_path: Path
) -> None:
    """SIGTERM: STOPPING=1, the open stream ends whole, exit 0, no worker or metrics dir left."""
    daemon = await _start(start_daemon, tmp_path, _config(fake_upstream.url))
    workers = _children(daemon.proc.pid)
    metrics_dirs = list((tmp_path / "run").glob("gatewayd-metrics-*"))
    assert len(metrics_dirs) == 1
    fake_upstream.state.event_delay = 0.1
    fake_upstream.state.answer = "the answer that must arrive whole"
    client = openai.AsyncOpenAI(base_url=f"{daemon.url}/v1", api_key="sk-client", max_retries=0)
    stream = await client.chat.completions.create(
        model="gpt-fake", messages=[{"role": "user", "content": "x"}], stream=True
    )
    first = await anext(aiter(stream))
    assert list(metrics_dirs[0].iterdir())

    daemon.signal(signal.SIGTERM)
    await daemon.notifications("STOPPING=1")
    rest = [c.choices[0].delta.content or "" async for c in stream if c.choices]
    assert (first.choices[0].delta.content or "") + "".join(rest) == (
        "the answer that must arrive whole"
    )
    await client.close()
    assert await asyncio.wait_for(daemon.proc.wait(), timeout=20) == 0
    assert not any(_alive(pid) for pid in workers)
    assert not metrics_dirs[0].exists()


async def test_workers_exit_when_the_arbiter_is_killed(
    start_daemon: StartDaemon, fake_upstream: FakeUpstream, tmp_path: Path
) -> None:
    """Workers orphaned by a SIGKILLed arbiter notice within seconds and exit on their own."""
    daemon = await _start(start_daemon, tmp_path, _config(fake_upstream.url))
    workers = _children(daemon.proc.pid)
    daemon.proc.kill()
    await daemon.proc.wait()
    await _until(lambda: not any(_alive(pid) for pid in workers), "orphaned workers exit")
    assert sum(r["msg"] == "arbiter is gone; stopping" for r in _records(daemon)) == 2


async def test_a_port_in_use_stops_the_arbiter_with_an_error(
    start_daemon: StartDaemon, fake_upstream: FakeUpstream, tmp_path: Path
) -> None:
    """A port in use, even with SO_REUSEPORT, is refused: exit 1, a clear line, no READY=1."""
    with socket.socket() as holder:
        # SO_REUSEPORT: without the arbiter's check its workers would join
        # this listener and quietly take half its connections.
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        listen = f"127.0.0.1:{holder.getsockname()[1]}"
        text = _config(fake_upstream.url).replace("{listen}", listen)
        daemon = await start_daemon(text, ready=False)
        assert await asyncio.wait_for(daemon.proc.wait(), timeout=20) == 1
    assert f"cannot listen on {listen}: Address already in use" in daemon.log()
    assert not [r for r in _records(daemon) if r["msg"] == "worker started"]
    assert not any("READY=1" in m for m in _drain_notifications(daemon))


async def test_a_worker_that_cannot_start_stops_the_arbiter(
    start_daemon: StartDaemon, fake_upstream: FakeUpstream, tmp_path: Path
) -> None:
    """A worker dying before it is ready (audit file cannot be opened) makes the start exit 1."""
    (tmp_path / "not-a-dir").write_text("")
    text = _config(fake_upstream.url).replace(
        "${STATE_DIRECTORY}/audit.jsonl", str(tmp_path / "not-a-dir" / "audit.jsonl")
    )
    daemon = await _start(start_daemon, tmp_path, text, ready=False)
    assert await asyncio.wait_for(daemon.proc.wait(), timeout=20) == 1
    assert any(r["msg"] == "a worker failed to start; stopping" for r in _records(daemon))
    assert not any("READY=1" in m for m in _drain_notifications(daemon))
    assert not list((tmp_path / "run").iterdir())


async def test_workers_dying_again_and_again_make_the_arbiter_give_up(
    start_daemon: StartDaemon, fake_upstream: FakeUpstream, tmp_path: Path
) -> None:
    """Six worker deaths within ten seconds exceed the start limit: the arbiter exits 1."""
    daemon = await _start(start_daemon, tmp_path, _config(fake_upstream.url))
    killed: set[int] = set()
    for _ in range(6):
        await _until(lambda: bool(_children(daemon.proc.pid) - killed), "a worker to kill appears")
        victim = min(_children(daemon.proc.pid) - killed)
        os.kill(victim, signal.SIGKILL)
        killed.add(victim)
    assert await asyncio.wait_for(daemon.proc.wait(), timeout=20) == 1
    assert any("giving up" in r["msg"] for r in _records(daemon))
    assert not any(_alive(pid) for pid in killed | _children(daemon.proc.pid))


async def test_one_worker_keeps_metrics_in_memory(
    start_daemon: StartDaemon, fake_upstream: FakeUpstream, tmp_path: Path
) -> None:
    """With workers: 1 there is no arbiter, no child process and no metrics directory."""
    daemon = await _start(start_daemon, tmp_path, _config(fake_upstream.url, workers=1))
    async with aiohttp.ClientSession() as session:
        assert await _chat(session, daemon) == 200
        assert await _pid(session, daemon) == daemon.proc.pid
    assert await daemon.metric("gatewayd_requests_total", {"route": "v1", "status": "200"}) == 1
    assert not _children(daemon.proc.pid)
    assert not list((tmp_path / "run").iterdir())


# Two processes append big batches to one file through JsonlFile, as two
# workers' audit writers do; each line names its writer and sequence number.
# A writer goes on past 200 batches until the file shows the other's lines,
# then writes one more, so the two really ran at the same time (however the
# scheduler started them).
_WRITER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from gatewayd.audit.jsonl import Chunk, JsonlFile

    path, name, go = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
    audit = JsonlFile(path)
    audit.open()
    pad = "x" * 900
    while not go.exists():
        time.sleep(0.001)
    batch = written = 0
    seen_at = None
    while (batch < 200 or seen_at is None or batch <= seen_at) and batch < 5000:
        lines = [
            f'{{"writer":"{name}","seq":{batch * 64 + i},"pad":"{pad}"}}\\n'.encode()
            for i in range(64)
        ]
        audit.write(Chunk(b"".join(lines), len(lines)))
        batch += 1
        written += sum(map(len, lines))
        if seen_at is None and path.stat().st_size > written:
            seen_at = batch
    audit.close()
    """
)


def test_two_processes_appending_to_one_audit_file_never_interleave_lines(
    tmp_path: Path,
) -> None:
    """Concurrent ~60 KB O_APPEND batches from two processes land whole: no line is torn."""
    path, go = tmp_path / "audit.jsonl", tmp_path / "go"
    writers = [
        subprocess.Popen([sys.executable, "-c", _WRITER, str(path), name, str(go)])
        for name in ("a", "b")
    ]
    go.touch()
    assert [w.wait(timeout=60) for w in writers] == [0, 0]
    records = [orjson.loads(line) for line in path.read_bytes().splitlines()]
    for name in ("a", "b"):
        seqs = [r["seq"] for r in records if r["writer"] == name]
        assert seqs == list(range(len(seqs)))
        assert len(seqs) >= 200 * 64
    # Every 64-line batch is one writer's, and the writers took turns: a, b, a.
    blocks = [{r["writer"] for r in records[i : i + 64]} for i in range(0, len(records), 64)]
    assert all(len(block) == 1 for block in blocks)
    order = [block.pop() for block in blocks]
    assert sum(x != y for x, y in itertools.pairwise(order)) >= 2


async def test_a_worker_that_never_reports_its_reload_does_not_stall_systemd(
    start_daemon: StartDaemon, fake_upstream: FakeUpstream, tmp_path: Path
) -> None:
    """A worker silent after SIGHUP is logged and the reload counted failed after
    shutdown_timeout; READY=1 still comes, so systemd does not stay in "reloading"."""
    text = _config(fake_upstream.url).replace("shutdown_timeout: 5s", "shutdown_timeout: 1s")
    daemon = await _start(start_daemon, tmp_path, text)
    stuck = min(_children(daemon.proc.pid))
    os.kill(stuck, signal.SIGSTOP)
    try:
        daemon.signal(signal.SIGHUP)
        await daemon.notifications("READY=1", count=2)
        silent = [r for r in _records(daemon) if r["msg"].startswith("worker did not report")]
        assert [r["worker_pid"] for r in silent] == [stuck]
    finally:
        os.kill(stuck, signal.SIGCONT)
    assert await daemon.metric("gatewayd_config_reloads_total", {"result": "error"}) == 1
