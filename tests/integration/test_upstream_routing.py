"""Through the gateway: a route's fallback, the 503 once every target is
ejected, and a dead target of three ejected after exactly failure_threshold tries."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from gatewayd.breaker import BreakerState
from tests.conftest import FakeUpstream, free_port
from tests.fakes.openai_upstream import FakeState, make_app
from tests.harness import running_gateway, write_config

CHAT = {"model": "gpt-fake", "messages": [{"role": "user", "content": "hello there"}]}


def _config(tmp_path: Path, spare_url: str, route_extra: str = "") -> str:
    """A route to a dead upstream (ejected after one failure), plus a live one."""
    return f"""
        server:
          listen: 127.0.0.1:0
        logging:
          level: warning
        upstreams:
          dead:
            url: http://127.0.0.1:{free_port()}
            retry:
              attempts: 1
            breaker:
              failure_threshold: 1
              open_for: 30s
          spare:
            url: {spare_url}
        routes:
          v1:
            prefix: /v1/
            upstream: dead
            {route_extra}
        audit:
          sink: jsonl
          path: {tmp_path}/audit.jsonl
          flush_interval: 50ms
    """


def _events(tmp_path: Path) -> list[dict[str, object]]:
    """Every audit event written so far."""
    return [orjson.loads(line) for line in (tmp_path / "audit.jsonl").read_bytes().splitlines()]


async def test_ejected_upstream_answers_503_with_retry_after(
    tmp_path: Path, fake_upstream: FakeUpstream
) -> None:
    """Once the only target is ejected, clients get 503 upstream_unavailable and Retry-After."""
    config = write_config(tmp_path, _config(tmp_path, fake_upstream.url))
    async with running_gateway(config) as gw, aiohttp.ClientSession() as client:
        first = await client.post(f"{gw.url}/v1/chat/completions", json=CHAT)
        assert first.status == 502
        second = await client.post(f"{gw.url}/v1/chat/completions", json=CHAT)
        assert second.status == 503
        assert (await second.json())["error"]["code"] == "upstream_unavailable"
        assert 1 <= int(second.headers["Retry-After"]) <= 30


async def test_fallback_answers_and_the_audit_names_it(
    tmp_path: Path, fake_upstream: FakeUpstream
) -> None:
    """With `fallback: spare`, a dead upstream's requests are answered by spare, per the audit."""
    text = _config(tmp_path, fake_upstream.url, route_extra="fallback: spare")
    config = write_config(tmp_path, text)
    async with running_gateway(config) as gw, aiohttp.ClientSession() as client:
        for _ in range(2):
            resp = await client.post(f"{gw.url}/v1/chat/completions", json=CHAT)
            assert resp.status == 200
            await resp.read()
    assert len(fake_upstream.state.received) == 2
    events = _events(tmp_path)
    assert [(e["upstream"], e["status"], e["attempts"]) for e in events] == [
        ("spare", 200, 2),
        ("spare", 200, 1),
    ]


async def test_a_dead_target_is_tried_failure_threshold_times_under_a_burst(
    tmp_path: Path, fake_upstream: FakeUpstream, aiohttp_server: Any
) -> None:
    """64 concurrent requests at start, then 64 more, over two live targets and
    one refusing connections: every client gets 200, and the dead target gets
    exactly failure_threshold (5) attempts before its breaker opens."""
    second = FakeState()
    other = await aiohttp_server(make_app(second))
    dead = f"http://127.0.0.1:{free_port()}"
    config = write_config(
        tmp_path,
        f"""
        server:
          listen: 127.0.0.1:0
        logging:
          level: warning
        upstreams:
          pool:
            urls: [{fake_upstream.url}, http://127.0.0.1:{other.port}, {dead}]
            breaker:
              failure_threshold: 5
              open_for: 30s
        routes:
          v1:
            prefix: /v1/
            upstream: pool
        audit:
          sink: jsonl
          path: {tmp_path}/audit.jsonl
          flush_interval: 50ms
        """,
    )

    async def post(client: aiohttp.ClientSession, url: str) -> int:
        async with client.post(url, json=CHAT) as resp:
            await resp.read()
            return resp.status

    async with running_gateway(config) as gw, aiohttp.ClientSession() as client:
        url = f"{gw.url}/v1/chat/completions"
        for _ in range(2):
            statuses = await asyncio.gather(*(post(client, url) for _ in range(64)))
            assert statuses == [200] * 64
        breakers = gw.holder.current.upstreams["pool"].breakers
        assert [b.state for b in breakers] == [
            BreakerState.CLOSED,
            BreakerState.CLOSED,
            BreakerState.OPEN,
        ]
    # Each request made one good attempt, after at most one on the dead target.
    attempts = Counter(e["attempts"] for e in _events(tmp_path))
    assert attempts == {1: 123, 2: 5}
    assert len(fake_upstream.state.received) + len(second.received) == 128
