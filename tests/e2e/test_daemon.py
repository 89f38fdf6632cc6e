"""The real gatewayd process driven by the official openai SDK, reloaded and stopped by signal."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable, Callable

import aiohttp
import openai
import pytest

from tests.conftest import FakeUpstream
from tests.e2e.conftest import DaemonProcess

pytestmark = pytest.mark.e2e

StartDaemon = Callable[[str], Awaitable[DaemonProcess]]


def _config(upstream_url: str, *, prefix: str = "/v1/", shutdown: str = "5s") -> str:
    return f"""
        server:
          listen: "{{listen}}"
          shutdown_timeout: {shutdown}
        logging:
          level: info
        upstreams:
          fake:
            url: {upstream_url}
            api_key: sk-upstream-secret
        routes:
          v1:
            prefix: {prefix}
            upstream: fake
        audit:
          sink: jsonl
          path: ${{STATE_DIRECTORY}}/audit.jsonl
    """


def _sdk(daemon: DaemonProcess) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{daemon.url}/v1", api_key="sk-client-key", max_retries=0)


async def test_openai_sdk_through_the_gateway(
    start_daemon: StartDaemon, fake_upstream: FakeUpstream
) -> None:
    """Chat, streamed chat, embeddings and models work through gatewayd as against the upstream."""
    daemon = await start_daemon(_config(fake_upstream.url))
    client = _sdk(daemon)
    chat = await client.chat.completions.create(
        model="gpt-fake", messages=[{"role": "user", "content": "ping"}]
    )
    assert chat.choices[0].message.content == "You said: ping"
    assert chat.usage is not None

    stream = await client.chat.completions.create(
        model="gpt-fake", messages=[{"role": "user", "content": "stream me"}], stream=True
    )
    pieces = [c.choices[0].delta.content or "" async for c in stream if c.choices]
    assert "".join(pieces) == "You said: stream me"
    assert len(pieces) > 3

    emb = await client.embeddings.create(model="emb-fake", input=["a", "bb"])
    assert [d.index for d in emb.data] == [0, 1]

    models = await client.models.list()
    assert [m.id for m in models.data] == ["gpt-fake"]

    assert all(
        r.headers["Authorization"] == "Bearer sk-upstream-secret"
        for r in fake_upstream.state.received
    )
    await client.close()


async def test_sdk_sees_gateway_errors_in_openai_shape(
    start_daemon: StartDaemon, fake_upstream: FakeUpstream
) -> None:
    """Errors the gateway makes are parsed by the SDK into its own exception types."""
    daemon = await start_daemon(_config(fake_upstream.url, prefix="/v1/chat/"))
    client = _sdk(daemon)
    with pytest.raises(openai.NotFoundError) as info:
        await client.models.list()
    assert info.value.code == "not_found"
    await client.close()


async def test_sighup_applies_a_good_config_and_keeps_open_streams(
    start_daemon: StartDaemon, fake_upstream: FakeUpstream, aiohttp_server: object
) -> None:
    """After SIGHUP new requests use the new config; a stream begun before ends on the old,
    however long past shutdown_timeout it runs."""
    from tests.fakes.openai_upstream import FakeState, make_app

    daemon = await start_daemon(_config(fake_upstream.url, shutdown="1s"))
    second_state = FakeState()
    second = await aiohttp_server(make_app(second_state))  # type: ignore[operator]
    # Nine events 0.25 s apart: the stream outlives shutdown_timeout after the reload.
    fake_upstream.state.event_delay = 0.25
    fake_upstream.state.answer = "slow answer from the first upstream"

    client = _sdk(daemon)
    stream = await client.chat.completions.create(
        model="gpt-fake", messages=[{"role": "user", "content": "x"}], stream=True
    )
    daemon.write_config(_config(f"http://127.0.0.1:{second.port}", shutdown="1s"))
    daemon.signal(signal.SIGHUP)
    messages = await daemon.notifications("READY=1", count=2)
    reload_msg = next(m for m in messages if "RELOADING=1" in m)
    assert "MONOTONIC_USEC=" in reload_msg

    pieces = [c.choices[0].delta.content or "" async for c in stream if c.choices]
    assert "".join(pieces) == "slow answer from the first upstream"

    chat = await client.chat.completions.create(
        model="gpt-fake", messages=[{"role": "user", "content": "after"}]
    )
    assert chat.choices[0].message.content == "You said: after"
    assert len(second_state.received) == 1
    assert await daemon.metric("gatewayd_config_reloads_total", {"result": "success"}) == 1
    await client.close()


async def test_sighup_with_a_bad_config_keeps_serving(
    start_daemon: StartDaemon, fake_upstream: FakeUpstream
) -> None:
    """A bad config on SIGHUP is logged with file and line, counted, and the old one serves on."""
    daemon = await start_daemon(_config(fake_upstream.url))
    daemon.write_config(_config(fake_upstream.url).replace("prefix: /v1/", "prefix: v1-no-slash"))
    daemon.signal(signal.SIGHUP)
    for _ in range(100):
        if await daemon.metric("gatewayd_config_reloads_total", {"result": "error"}) == 1:
            break
        await asyncio.sleep(0.05)
    assert await daemon.metric("gatewayd_config_reloads_total", {"result": "error"}) == 1
    assert "gatewayd.yaml:" in daemon.log()
    assert "routes.v1.prefix" in daemon.log()

    client = _sdk(daemon)
    chat = await client.chat.completions.create(
        model="gpt-fake", messages=[{"role": "user", "content": "still"}]
    )
    assert chat.choices[0].message.content == "You said: still"
    await client.close()


async def test_sigterm_drains_an_open_stream_then_exits_zero(
    start_daemon: StartDaemon, fake_upstream: FakeUpstream
) -> None:
    """SIGTERM stops new connections, lets the open stream finish, says STOPPING=1, exits 0."""
    daemon = await start_daemon(_config(fake_upstream.url))
    fake_upstream.state.event_delay = 0.1
    fake_upstream.state.answer = "the answer that must arrive whole"
    client = _sdk(daemon)
    stream = await client.chat.completions.create(
        model="gpt-fake", messages=[{"role": "user", "content": "x"}], stream=True
    )
    first = await anext(aiter(stream))
    daemon.signal(signal.SIGTERM)
    await daemon.notifications("STOPPING=1")
    rest = [c.choices[0].delta.content or "" async for c in stream if c.choices]
    assert (first.choices[0].delta.content or "") + "".join(rest) == (
        "the answer that must arrive whole"
    )
    assert await asyncio.wait_for(daemon.proc.wait(), timeout=10) == 0
    with pytest.raises(aiohttp.ClientConnectionError):
        async with aiohttp.ClientSession() as session:
            await session.get(f"{daemon.url}/health")
    await client.close()
    audit = (daemon.config_path.parent / "audit.jsonl").read_text()
    assert audit.count('"status":200') >= 1
