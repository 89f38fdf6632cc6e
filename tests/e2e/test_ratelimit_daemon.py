"""Rate limits on the real gatewayd process: the openai SDK, SIGHUP, two processes on one Redis."""

from __future__ import annotations

import asyncio
import hashlib
import signal
import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import openai
import orjson
import pytest

from tests.conftest import FakeUpstream
from tests.e2e.conftest import DaemonProcess

pytestmark = pytest.mark.e2e

StartDaemon = Callable[[str], Awaitable[DaemonProcess]]
KEY = "gwk-e2e-client"
CHAT = {"model": "gpt-fake", "messages": [{"role": "user", "content": "hi"}]}


def _config(upstream_url: str, ratelimit: str) -> str:
    return f"""
        server:
          listen: "{{listen}}"
        logging:
          level: info
        upstreams:
          fake:
            url: {upstream_url}
            api_key: sk-upstream-secret
        routes:
          v1:
            prefix: /v1/
            upstream: fake
        clients:
          app:
            key_sha256: {hashlib.sha256(KEY.encode()).hexdigest()}
        auth:
          require_client_key: true
        ratelimit:
          {ratelimit}
        audit:
          sink: jsonl
          path: ${{STATE_DIRECTORY}}/audit.jsonl
    """


async def _status(client: aiohttp.ClientSession, daemon: DaemonProcess) -> int:
    async with client.post(
        f"{daemon.url}/v1/chat/completions",
        json=CHAT,
        headers={"Authorization": f"Bearer {KEY}"},
    ) as resp:
        await resp.read()
        return resp.status


async def test_the_openai_sdk_recovers_through_a_limit(
    start_daemon: StartDaemon, fake_upstream: FakeUpstream
) -> None:
    """The SDK's own retries wait out each 429's Retry-After, so no error reaches the caller."""
    daemon = await start_daemon(
        _config(fake_upstream.url, "requests_per_minute: 120\n          burst: 1")
    )
    sdk = openai.AsyncOpenAI(base_url=f"{daemon.url}/v1", api_key=KEY, max_retries=3)
    loop = asyncio.get_running_loop()
    started = loop.time()
    for _ in range(4):
        chat = await sdk.chat.completions.create(
            model="gpt-fake", messages=[{"role": "user", "content": "ping"}]
        )
        assert chat.choices[0].message.content == "You said: ping"
    stream = await sdk.chat.completions.create(
        model="gpt-fake", messages=[{"role": "user", "content": "stream"}], stream=True
    )
    assert "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    await sdk.close()
    # Five requests at two a second, from a burst of one: about two seconds of waiting.
    assert loop.time() - started >= 1.5
    assert len(fake_upstream.state.received) == 5
    refused = await daemon.metric(
        "gatewayd_ratelimit_rejections_total", {"route": "v1", "limit": "requests"}
    )
    assert refused >= 3


async def test_a_reload_keeps_every_budget_and_applies_new_rates(
    start_daemon: StartDaemon, fake_upstream: FakeUpstream
) -> None:
    """A spent budget stays spent across SIGHUP, also when the reload changes the rate."""
    daemon = await start_daemon(
        _config(fake_upstream.url, "requests_per_minute: 6\n          burst: 2")
    )
    async with aiohttp.ClientSession() as client:
        assert [await _status(client, daemon) for _ in range(3)] == [200, 200, 429]
        daemon.write_config(
            _config(fake_upstream.url, "requests_per_minute: 12\n          burst: 2")
        )
        daemon.signal(signal.SIGHUP)
        await daemon.notifications("READY=1", count=2)
        assert "configuration reloaded" in daemon.log()
        assert await _status(client, daemon) == 429


# A burst of 4 is decided in Redis request by request; one of 320 mostly on
# each process's leases (up to 20 at a time, gatewayd.ratelimit.leases).
@pytest.mark.parametrize("burst", [4, 320])
async def test_two_processes_on_one_redis_share_one_limit(
    start_daemon: StartDaemon, fake_upstream: FakeUpstream, redis_url: str, burst: int
) -> None:
    """Two gatewayd processes under concurrent load let through no more than burst + rate x time."""
    limits = f"""backend: redis
          redis_url: {redis_url}
          on_backend_error: deny
          # Generous: the test is about sharing, on a machine that may be busy.
          redis_timeout: 1s
          requests_per_minute: 240
          burst: {burst}"""
    one = await start_daemon(_config(fake_upstream.url, limits))
    two = await start_daemon(_config(fake_upstream.url, limits))
    loop = asyncio.get_running_loop()
    async with aiohttp.ClientSession() as client:
        started = loop.time()
        deadline = started + 2.0

        async def hammer(daemon: DaemonProcess) -> list[int]:
            statuses = []
            # Until the deadline, and past the burst: the limit must be reached.
            while loop.time() < deadline or 429 not in statuses:
                statuses.append(await _status(client, daemon))
            return statuses

        results = await asyncio.gather(*(hammer(d) for d in (one, two) for _ in range(6)))
        elapsed = loop.time() - started
    statuses = [s for r in results for s in r]
    assert set(statuses) == {200, 429}
    # Four a second after the burst, whichever process was asked.
    assert burst <= statuses.count(200) <= burst + int(elapsed * 4) + 1
    assert sum(r.count(200) for r in results[:6]) > 0
    assert sum(r.count(200) for r in results[6:]) > 0


async def test_a_client_certificate_is_a_client_identity(
    start_daemon: StartDaemon, fake_upstream: FakeUpstream, tmp_path: Path
) -> None:
    """Under mutual TLS, clients.NAME.tls_subject names a client by its verified certificate:
    it passes require_client_key and spends its own budget; another valid certificate is 401."""
    from tests.fakes.certs import TestCA

    ca = TestCA(tmp_path / "ca")
    server = ca.issue("gateway")
    app, stranger = ca.issue("billing", client=True), ca.issue("stranger", client=True)
    text = f"""
        server:
          listen: "{{listen}}"
          tls:
            cert: {server.cert}
            key: {server.key}
            client_ca: {ca.path}
        upstreams:
          fake:
            url: {fake_upstream.url}
        routes:
          v1:
            prefix: /v1/
            upstream: fake
        clients:
          billing:
            tls_subject: "{app.subject}"
            requests_per_minute: 60
            burst: 2
        auth:
          require_client_key: true
        audit:
          sink: jsonl
          path: {tmp_path}/audit.jsonl
          flush_interval: 50ms
    """
    daemon = await start_daemon(text)
    url = daemon.url.replace("http://", "https://")

    async def status(context: ssl.SSLContext) -> int:
        async with (
            aiohttp.ClientSession() as client,
            client.post(f"{url}/v1/chat/completions", json=CHAT, ssl=context) as resp,
        ):
            await resp.read()
            return resp.status

    mine = ca.client_context(app)
    assert [await status(mine) for _ in range(3)] == [200, 200, 429]
    assert await status(ca.client_context(stranger)) == 401
    await asyncio.sleep(0.3)
    events = [orjson.loads(line) for line in (tmp_path / "audit.jsonl").read_bytes().splitlines()]
    assert [e["client"] for e in events[:3]] == ["client:billing"] * 3

    # key: tls_subject gives each certificate a budget, though all come from one address.
    other = ca.issue("stranger-2", client=True)
    daemon.write_config(
        text.replace("require_client_key: true", "require_client_key: false")
        + "\n        ratelimit:\n          key: tls_subject\n"
        "          requests_per_minute: 60\n          burst: 1\n"
    )
    daemon.signal(signal.SIGHUP)
    await daemon.notifications("READY=1", count=2)
    first, second = ca.client_context(stranger), ca.client_context(other)
    assert [await status(first), await status(first), await status(second)] == [200, 429, 200]
